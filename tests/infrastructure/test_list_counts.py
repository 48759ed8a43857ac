"""List counters as a fold: moved one append at a time (the inline path, dropping counters
that reach zero) they equal the counters of one fold of the whole history (a rebuild) and a
count of the final views, over random but legal histories."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings

from domain.projections import Views, project
from infrastructure.list_counts import CountKey, count_changes, count_keys
from tests.domain.test_evaluation_machine import Step, histories
from tests.domain.test_projection_properties import envelopes, play, replay


def moved(counters: Counter[CountKey], changes: dict[CountKey, int]) -> None:
    for key, n in changes.items():
        counters[key] += n
        if counters[key] == 0:
            del counters[key]


@settings(max_examples=80, deadline=None)
@given(history=histories)
def test_counters_moved_per_append_equal_one_fold_of_the_log_and_a_count_of_the_views(
    history: list[Step],
) -> None:
    world = play(history)
    inline: Counter[CountKey] = Counter()
    views = Views()
    for batch, batch_envelopes in zip(world.batches, envelopes(world.batches), strict=True):
        before = dict(views.evaluations)
        for event, envelope in zip(batch, batch_envelopes, strict=True):
            project(views, event, envelope)
        moved(inline, count_changes(before, views.evaluations))

    rebuilt: Counter[CountKey] = Counter()
    moved(rebuilt, count_changes({}, replay(world.batches).evaluations))
    counted = Counter(k for v in views.evaluations.values() for k in count_keys(v))

    assert inline == rebuilt == counted
