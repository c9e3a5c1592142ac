"""The acoustic model: log-mel features and the network alone (no loss, decoding or storage); imports data and config only."""
