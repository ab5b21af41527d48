"""Measuring models: energy and the addition-only audit (:mod:`.energy`), throughput and achieved
FLOP/s (:mod:`.bench`), attentions compared side by side (:mod:`.compare`)."""
