"""`realign-eval`: AlpacaEval 2 and Arena-Hard judging as reproducible reports."""
