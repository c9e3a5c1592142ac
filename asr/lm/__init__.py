"""Language models: lexicons and ARPA files, KenLM LM building, pronunciation lexicons, the CMU Sphinx English LM; imports data, utils and errors only (no torch)."""
