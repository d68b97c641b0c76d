"""The one progress line every long step draws: counts, rate and ETA; resumed work off the total; phases."""

from __future__ import annotations

from qscope_data.progress import Bar


def test_a_bar_counts_items_and_its_rate_work_and_takes_resumed_items_off_the_total(capsys):
    with Bar("encode", 10, enabled=True, unit="docs", rate_unit="tok") as bar:
        bar.skip(4)
        bar.advance(2, work=300)
        bar.advance(1, work=100)
        bar.note("layer 6")
    err = capsys.readouterr().err
    assert "encode" in err and "3/6 docs" in err and "tok/s" in err and "layer 6" in err
    assert (bar.done, bar.work, bar.total) == (3, 400, 6)


def test_phases_and_the_callback_form_libraries_take(capsys):
    with Bar("sasft", enabled=True) as bar:
        advance = bar.start("read en", 2)  # the unstarted, unsized first line is reused
        advance(2)
        bar.start("read zh", 5)(1)
    err = capsys.readouterr().err
    assert "read en" in err and "2/2" in err and "read zh" in err and "1/5" in err and "sasft" not in err


def test_a_disabled_bar_draws_nothing_and_still_counts(capsys):
    with Bar("score", 5, enabled=False) as bar:
        bar.advance(5)
    assert capsys.readouterr().err == "" and bar.done == 5
