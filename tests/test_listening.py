"""Blind A/B votes: the SQLite store (concurrent writers, refusals), the statistics and the report formats."""

import concurrent.futures
import sqlite3

import pytest

from keras_music import listening


def comparison_store(tmp_path, first_dir="/x", second_dir="/y"):
    store = listening.Store(str(tmp_path / "votes.sqlite"))
    store.add_comparison("x vs y", "prefer", first="x", second="y", first_dir=first_dir, second_dir=second_dir)
    return store, store.add_stimulus("x", "x.ogg", seconds=1.0), store.add_stimulus("y", "y.ogg", seconds=1.5)


# ----------------------------------------------------------------------------- statistics

@pytest.mark.parametrize("k,n", [(0, 1), (3, 10), (7, 10), (25, 50), (50, 50), (61, 100), (1, 13)])
def test_interval_and_p_value_match_scipy(k, n):
    from scipy import stats

    test = stats.binomtest(k, n, 0.5)
    low, high = test.proportion_ci(confidence_level=0.95, method="wilson")
    assert listening.wilson_interval(k, n) == pytest.approx((low, high), abs=1e-9)
    assert listening.binomial_p_value(k, n) == pytest.approx(test.pvalue, rel=1e-9)


def test_no_trials_is_the_whole_interval_and_p_one():
    assert listening.wilson_interval(0, 0) == (0.0, 1.0)
    assert listening.binomial_p_value(0, 0) == 1.0


def test_summaries_state_the_question_and_leave_statistics_out_without_votes():
    empty = listening.summarize("x vs y", "prefer", first="x", second="y", votes=0, chose_first=0)
    assert empty == {"name": "x vs y", "kind": "prefer", "first": "x", "second": "y",
                     "question": "which do you prefer? (preference = share who picked x)", "listeners": None, "votes": 0,
                     "chose_first": 0, "preference": None, "ci95": None, "p_value": None}
    real = listening.summarize("held-out:r vs r@1", "real", first="held-out:r", second="r@1", votes=4, chose_first=3)
    assert real["question"] == "which is the human? (preference = share who picked the real piece)"
    assert real["preference"] == 0.75 and real["ci95"] == list(listening.wilson_interval(3, 4))
    assert real["p_value"] == pytest.approx(10 / 16)  # 0, 1, 3 or 4 of 4 are no likelier than 3


# ----------------------------------------------------------------------------- the store

def test_concurrent_store_writers_lose_nothing(tmp_path):
    store, a, b = comparison_store(tmp_path)
    pairs = [store.add_pair("x vs y", a, second_stimulus=b, first_is="ab"[i % 2]) for i in range(200)]
    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        list(pool.map(lambda p: listening.Store(store.path).vote(p, "a"), pairs))
    (result,) = store.results()
    assert result["votes"] == 200 and result["chose_first"] == 100
    connection = sqlite3.connect(store.path)
    assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"  # WAL is a property of the file
    connection.close()


def test_a_pair_serves_its_sides_in_the_order_drawn_and_takes_one_vote(tmp_path):
    store, first, second = comparison_store(tmp_path)
    pair = store.add_pair("x vs y", first, second_stimulus=second, first_is="b")  # the first side plays as b
    assert (store.pair_file(pair, "a"), store.pair_file(pair, "b")) == ("y.ogg", "x.ogg")
    assert store.stimuli("y") == [{"id": second, "file": "y.ogg", "seconds": 1.5}]
    assert store.vote(pair, "b", "warmer") == {"pair_id": pair, "comparison": "x vs y", "choice": "b"}
    (vote,) = store.votes()
    assert (vote["pair_id"], vote["choice"], vote["chose_first"], vote["reason"]) == (pair, "b", True, "warmer")
    with pytest.raises(listening.ListeningError, match="already has a vote") as refused:
        store.vote(pair, "a")
    assert refused.value.status == 409
    assert store.results()[0]["votes"] == 1


@pytest.mark.parametrize("call,words,status", [
    (lambda store, pair: store.pair_file(pair, "c"), "side must be 'a' or 'b', got 'c'", 404),
    (lambda store, pair: store.pair_file("0" * 32, "a"), "unknown pair '0000", 404),
    (lambda store, pair: store.vote(pair, "c"), "choice must be 'a' or 'b', got 'c'", 400),
    (lambda store, pair: store.vote("0" * 32, "a"), "unknown pair '0000", 404),
])
def test_bad_sides_choices_and_unknown_pairs_are_refused_with_a_status(tmp_path, call, words, status):
    store, first, second = comparison_store(tmp_path)
    pair = store.add_pair("x vs y", first, second_stimulus=second, first_is="a")
    with pytest.raises(listening.ListeningError, match=words) as refused:
        call(store, pair)
    assert refused.value.status == status
    assert store.votes() == []


def test_results_for_runs_match_either_order_and_only_with_votes(tmp_path):
    store, first, second = comparison_store(tmp_path, str(tmp_path / "one"), str(tmp_path / "two"))
    store.add_comparison("x vs x", "prefer", first="x", second="x2", first_dir=str(tmp_path / "one"),
                         second_dir=str(tmp_path / "three"))
    store.add_comparison("x vs y", "real", first="ignored", second="ignored", first_dir="/a", second_dir="/b")  # a known name is kept as it was
    assert store.results_for_runs([str(tmp_path / "two"), str(tmp_path / "one")]) == []  # no votes yet
    store.vote(store.add_pair("x vs y", first, second_stimulus=second, first_is="a"), "a")
    (result,) = store.results_for_runs([str(tmp_path / "two"), str(tmp_path / "one")])
    assert (result["name"], result["kind"], result["first"], result["votes"]) == ("x vs y", "prefer", "x", 1)


def test_experiment_report_includes_the_votes_between_its_two_runs(tmp_path):
    from keras_music import experiment

    original, modified, other = (tmp_path / n for n in ("original", "modified", "other"))
    store = listening.Store(str(tmp_path / listening.DB_NAME))
    for name, second in (("original@1 vs modified@1", modified), ("original@1 vs other@1", other)):
        store.add_comparison(name, "prefer", first="original@1", second=name.split(" vs ")[1], first_dir=str(original),
                             second_dir=str(second))
        a, b = store.add_stimulus("x", "a.ogg", seconds=1.0), store.add_stimulus("y", "b.ogg", seconds=1.0)
        for number in range(8):
            store.vote(store.add_pair(name, a, second_stimulus=b, first_is="a"), "a" if number < 6 else "b")
    (result,) = experiment.listening_results(str(tmp_path), [str(modified), str(original)])
    assert result["name"] == "original@1 vs modified@1" and result["votes"] == 8 and result["preference"] == 0.75
    row = listening.report_lines([result])[2]
    assert "| original@1 vs modified@1 |" in row and "| 1 | 8 | 0.750 |" in row
    assert experiment.listening_results(str(tmp_path / "none"), [str(original), str(modified)]) == []


# ----------------------------------------------------------------------------- report formats

def test_csv_and_markdown_rows_carry_every_figure():
    voted = listening.summarize("x vs y", "prefer", first="x", second="y", votes=4, chose_first=3)
    empty = listening.summarize("x vs z", "prefer", first="x", second="z", votes=0, chose_first=0)
    assert voted["ci95"] == pytest.approx([0.30064, 0.95441], abs=1e-5)
    low, high = voted["ci95"]
    assert listening.results_csv([voted, empty]).splitlines() == [
        "name,kind,first,second,listeners,votes,chose_first,preference,ci95_low,ci95_high,p_value",
        f"x vs y,prefer,x,y,,4,3,0.75,{low!r},{high!r},0.625",
        "x vs z,prefer,x,z,,0,0,,,,"]
    assert listening.report_lines([voted]) == [
        "| comparison | question | listeners | votes | preference | 95% CI (Wilson) | p (two-sided binomial) |",
        "|---|---|---|---|---|---|---|",
        "| x vs y | which do you prefer? (preference = share who picked x) | - | 4 | 0.750 | 0.301-0.954 | 0.625 |"]


# ----------------------------------------------------------------------------- listeners

def test_votes_count_per_listener_and_a_pair_takes_its_own_listeners_vote_only(tmp_path):
    store, x, y = comparison_store(tmp_path)
    pairs = {listener: [store.add_pair("x vs y", x, second_stimulus=y, first_is="a",
                                       listener=listener) for _ in range(3)] for listener in ("l1", "l2")}
    with pytest.raises(listening.ListeningError) as refused:
        store.vote(pairs["l1"][0], "a", listener="l2")
    assert refused.value.status == 403 and "another listener" in str(refused.value)
    for listener, dealt in pairs.items():
        for number, pair in enumerate(dealt):
            store.vote(pair, "a" if listener == "l1" or number == 0 else "b", listener=listener)
    (result,) = store.results()
    assert (result["votes"], result["listeners"], result["chose_first"]) == (6, 2, 4)
    by_listener = {r["listener"]: (r["votes"], r["chose_first"]) for r in store.results_by_listener()}
    assert by_listener == {"l1": (3, 3), "l2": (3, 1)}
    assert {v["listener"] for v in store.votes()} == {"l1", "l2"}


def test_a_vote_file_from_before_listener_ids_opens_and_keeps_its_votes(tmp_path):
    path = str(tmp_path / "old.sqlite")
    old_schema = listening.SCHEMA.replace(",\n    listener TEXT NOT NULL DEFAULT ''", "")
    assert "listener" not in old_schema
    with sqlite3.connect(path) as connection:
        connection.executescript(old_schema)
        connection.execute("INSERT INTO comparisons VALUES ('x vs y', 'prefer', 'x', 'y', '/a', '/b')")
        connection.execute("INSERT INTO stimuli VALUES ('s1', 'x', 'x.ogg', 1.0, 0)")
        connection.execute("INSERT INTO pairs VALUES ('p1', 'x vs y', 's1', 's1', 'a', 0)")
        connection.execute("INSERT INTO votes VALUES ('p1', 'a', 1, '', 0)")
    store = listening.Store(path)
    (result,) = store.results()
    assert (result["votes"], result["listeners"]) == (1, 1)
    assert store.votes()[0]["listener"] == ""
