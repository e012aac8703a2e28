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

# Key guidance (export/README.md, "Key guidance"): with a key asked for, each step's probabilities are
# p(x | key)^(1 + w) / p(x | the other mode)^w, renormalised. Chosen on a run of configs/steer.yaml
# (README, "Steering"): there w = 3 moved the share of pieces in the requested key little, 10 took it to
# 95%, 30 broke it; on other runs 10 gives less, and the best weight depends on the model.
KEY_GUIDANCE = 10.0

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
            "tempo": TEMPO, "key_guidance": KEY_GUIDANCE}
