from worker.stop_matcher import StopMatcher


def feed_all(stops, segments):
    matcher = StopMatcher(stops)
    sent = [matcher.feed(s) for s in segments]
    if not matcher.stopped:
        sent.append(matcher.flush())
    return "".join(sent), matcher.stopped, sent


def test_no_stops_passes_everything_through():
    assert feed_all([], ["a", "b"])[:2] == ("ab", False)


def test_stop_inside_one_segment_cuts_before_it():
    assert feed_all(["END"], ["hello END world"])[:2] == ("hello ", True)


def test_stop_split_across_segments_is_never_partly_sent():
    text, stopped, sent = feed_all(["<|end|>"], ["Paris", "<|", "en", "d|>", "more"])
    assert (text, stopped) == ("Paris", True)
    assert all("<" not in s for s in sent)


def test_held_back_text_is_released_when_it_turns_out_not_to_be_a_stop():
    text, stopped, sent = feed_all(["\n\n"], ["one\n", "two"])
    assert (text, stopped) == ("one\ntwo", False)
    assert sent[0] == "one"  # the newline waited to see whether a second one followed


def test_earliest_of_several_stops_wins():
    assert feed_all(["b", "a"], ["xxab"])[:2] == ("xx", True)


def test_the_stop_that_matched_is_named():
    matcher = StopMatcher(["b", "a"])
    assert matcher.feed("xxab") == "xx" and matcher.matched == "a"
    assert StopMatcher(["z"]).matched is None
