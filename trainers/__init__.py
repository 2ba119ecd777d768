"""`realign-train`: reviser and policy training with TRL from stored pair datasets."""
