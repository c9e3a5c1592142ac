#!/usr/bin/env bash
# Build KenLM's lmplz, build_binary (for `asr lm build`) and query (for `asr lm perplexity`) once,
# and cache them.
#
#   bash scripts/build_kenlm.sh            # -> ~/.cache/asr/kenlm/bin/{lmplz,build_binary,query}
#
# The source is the kenlm sdist from PyPI (checked against PyPI's sha256); the build needs
# cmake, a C++ compiler and Boost (program_options, system, thread), installed with apt when
# missing and running as root. The compile takes ~30 s on 2 cores (the apt step, when
# needed, a few minutes); later runs return at once. `asr` finds the tools there, on PATH, or in $ASR_KENLM_BIN.
set -euo pipefail

dest=${ASR_KENLM_BIN:-${XDG_CACHE_HOME:-$HOME/.cache}/asr/kenlm/bin}
tools=(lmplz build_binary query)
if [[ -x $dest/lmplz && -x $dest/build_binary && -x $dest/query ]]; then
    echo "KenLM tools already built: $dest"
    exit 0
fi

packages=(build-essential cmake libboost-program-options-dev libboost-system-dev libboost-thread-dev
          libboost-test-dev zlib1g-dev libbz2-dev liblzma-dev)
missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if ((${#missing[@]})); then
    if [[ $(id -u) != 0 ]]; then
        echo "error: missing packages: ${missing[*]} (install them, e.g. sudo apt-get install ${missing[*]})" >&2
        exit 1
    fi
    echo "installing ${missing[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 - "$work" <<'EOF'
import hashlib, json, sys, urllib.request
work = sys.argv[1]
release = json.load(urllib.request.urlopen("https://pypi.org/pypi/kenlm/json", timeout=60))
sdist = next(u for u in release["urls"] if u["packagetype"] == "sdist")
data = urllib.request.urlopen(sdist["url"], timeout=300).read()
if hashlib.sha256(data).hexdigest() != sdist["digests"]["sha256"]:
    sys.exit(f"error: {sdist['filename']}: sha256 does not match PyPI's")
open(f"{work}/kenlm.tar.gz", "wb").write(data)
print(f"downloaded {sdist['filename']} ({len(data) // 1024} KiB, sha256 verified)")
EOF
tar -xzf "$work/kenlm.tar.gz" -C "$work"
source_dir=$(find "$work" -maxdepth 2 -name CMakeLists.txt -printf '%h\n' | head -1)
# Compiler output (many deprecation warnings) goes to a log, shown only when the build fails.
if ! { cmake -S "$source_dir" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DCOMPILE_TESTS=OFF &&
       cmake --build "$work/build" --target "${tools[@]}" -j "$(nproc)"; } > "$work/build.log" 2>&1; then
    tail -40 "$work/build.log" >&2
    echo "error: the KenLM build failed (log above)" >&2
    exit 1
fi
mkdir -p "$dest"
for tool in "${tools[@]}"; do
    install -m 755 "$(find "$work/build" -type f -name "$tool" -perm -u+x | head -1)" "$dest/$tool.tmp"
    mv "$dest/$tool.tmp" "$dest/$tool"  # atomic: an interrupted build never leaves a broken tool
done
echo "built ${tools[*]} in $dest"
