"""RowStream: what text a client may see while a row is generated."""

from __future__ import annotations

from monitor.serve.rows import RowStream

WORDS = {1: "Hel", 2: "lo", 3: " wor", 4: "ld", 5: "!", 6: " STOP", 7: " more"}


def decode(ids: list[int]) -> str:
    return "".join(WORDS[i] for i in ids)


def feed(row: RowStream, ids: list[int]) -> str:
    """Drive the engine's protocol: every earlier token is checked before the next push."""
    out = ""
    for i in ids:
        out += row.checked() + row.push(i, eos=False)
    return out


def test_without_hold_back_text_is_released_at_once_and_ends_with_length() -> None:
    row = RowStream(decode, max_tokens=3)
    assert feed(row, [1, 2]) == "Hello"
    assert row.push(3, eos=False) == "" and row.pending == "length"  # last token unchecked yet
    assert row.checked() == " wor" and row.finish_reason == "length"
    assert row.visible_text() == "Hello wor" and row.completion_tokens == 3


def test_hold_back_keeps_the_newest_tokens_until_checked() -> None:
    row = RowStream(decode, max_tokens=10, hold_back=2)
    assert feed(row, [1, 2]) == ""
    assert feed(row, [3]) == "Hel"
    assert row.push(0, eos=True) == ""  # EOS: the end waits for the last token's check
    assert row.checked() == "lo wor" and row.finish_reason == "stop"


def test_a_halt_suppresses_the_matching_token_and_everything_after() -> None:
    row = RowStream(decode, max_tokens=10, hold_back=1)
    sent = feed(row, [1, 2, 3, 4])  # "Hel" "lo" " wor" released, "ld" held
    assert sent == "Hello wor"
    assert row.halt(3) == "" and row.finish_reason == "content_filter"  # token 3 ("ld") matched
    assert row.visible_text() == "Hello wor" and row.completion_tokens == 3
    assert row.push(5, eos=False) == "" and row.checked() == ""  # nothing after a halt


def test_a_halt_in_the_prompt_leaves_an_empty_answer() -> None:
    row = RowStream(decode, max_tokens=10)
    assert row.halt(-4) == "" and row.visible_text() == "" and row.completion_tokens == 0


def test_halt_overrides_a_pending_natural_end_on_the_unchecked_last_token() -> None:
    row = RowStream(decode, max_tokens=2, hold_back=1)
    feed(row, [1])
    row.push(2, eos=False)  # reaches max_tokens; token 1 ("lo") not checked yet
    assert row.halt(1) == "Hel" and row.finish_reason == "content_filter"


def test_stop_sequences_are_cut_and_their_prefixes_wait() -> None:
    row = RowStream(decode, max_tokens=10, stops=("ld!",))
    assert feed(row, [1, 2, 3]) == "Hello wor"
    assert feed(row, [4]) == ""  # "ld" could start "ld!": held
    assert row.push(5, eos=False) == "" and row.pending == "stop"
    assert row.checked() == "" and row.visible_text() == "Hello wor"
    assert row.finish_reason == "stop"


def test_a_prefix_that_does_not_become_a_stop_sequence_is_released() -> None:
    row = RowStream(decode, max_tokens=10, stops=("ld!",))
    feed(row, [1, 2, 3, 4])
    assert feed(row, [7]) == "ld more"


def test_incomplete_utf8_waits_for_the_next_token() -> None:
    table = {1: "a", 2: "\ufffd", 3: "é"}

    def dec(ids: list[int]) -> str:  # token 2 alone is half a character; 2+3 make "é"
        text = "".join(table[i] for i in ids)
        return text.replace("\ufffdé", "é")

    row = RowStream(dec, max_tokens=10)
    assert feed(row, [1, 2]) == "a"
    assert feed(row, [3]) == "é"
