"""Scoring: word and character error rates, evaluation reports, LM weight tuning on a dev set; imports inference, decoding and below, never deploy, serving or cli."""
