"""Re-send recorded calls and runs through the proxy; diff them; experiments; score outputs
(scorers.py, judge.py for the LLM judge and embeddings, evaluator.py to store the scores)."""
