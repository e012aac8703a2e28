"""The one home of the generation and training defaults every command, the studio and the web page share."""

# Where the default run's generated pieces sit closest to held-out ones on the report's
# metrics (README, "What the default run reaches").
TEMPERATURE = 0.9
TOP_K = 0  # off
TOP_P = 1.0  # off
SEED = 0  # where a seed is required

# Piece length in events (sonorities; tokens of the classic representation).
LENGTH = 200
# Events a piece must have before a sampled <piece> boundary may end it.
MIN_LENGTH = 8
# The most events one piece may ask for, in generate and in the studio.
MAX_LENGTH = 10_000
# A model that keeps opening sonorities without closing them must still end: a piece
# stops after this many tokens per requested event (export/README.md, "One piece").
MAX_TOKENS_PER_EVENT = 32

# With a key asked for (README, "Steering"; export/README.md, "Key prior" and "Key guidance"):
# the key prior multiplies each pitch token's probability by r(pitch class)^beta, r the ratio of how
# often that pitch class starts a note in the training pieces of the asked key to all keyed ones; key
# guidance raises p(x | key) to 1 + w over p(x | the other mode)^w. Chosen on two runs of
# configs/steer.yaml, 100 pieces per key at T 0.9: the share estimated in the asked key was 53-61% with
# the model alone, 64-95% with guidance w = 10 alone, 88-95% with beta 1, 98-99% with beta 2, and adding
# guidance to beta 2 lowered it (w 5: 95-98%, w 10: 93-94%); the prior also costs no second model step.
KEY_PRIOR = 2.0
KEY_GUIDANCE = 0.0

# Evaluate's and experiment's temperature sweep: the recommended one, a safer one and two wilder ones.
TEMPERATURES = (0.5, 0.9, 1.0, 1.5)

# Beats per minute only when a run knows no tempo of its own (prepared.json "timing").
TEMPO = 120.0

# Dropout after each LSTM layer.
DROPOUT = 0.2


def as_dict() -> dict:
    """The defaults a page or a report shows, as plain JSON values (web.json "defaults")."""
    return {"temperature": TEMPERATURE, "top_k": TOP_K, "top_p": TOP_P, "length": LENGTH,
            "min_length": MIN_LENGTH, "max_length": MAX_LENGTH, "max_tokens_per_event": MAX_TOKENS_PER_EVENT,
            "tempo": TEMPO, "key_guidance": KEY_GUIDANCE, "key_prior": KEY_PRIOR}
