"""losslab engine: domain-agnostic trainer, data path, results store and tables."""
