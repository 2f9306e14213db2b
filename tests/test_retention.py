"""The retention planner: examples of each rule, then its invariants over generated repositories."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from fnmatch import fnmatchcase

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tasks.pushes.retention import (
    PROTECTED_REASON,
    PrunePlan,
    RetentionPolicy,
    TagState,
    plan_prune,
)

T0 = datetime(2025, 1, 1, tzinfo=UTC)


def digest(name: str) -> str:
    return "sha256:" + name.encode().hex().ljust(64, "0")[:64]


def tag(name: str, image: str, hours: float | None, children: tuple[str, ...] = ()) -> TagState:
    created = None if hours is None else T0 + timedelta(hours=hours)
    return TagState(name, digest(image), created, tuple(digest(c) for c in children))


def decisions(plan: PrunePlan) -> dict[str, tuple[bool, str]]:
    return {d.tag: (d.keep, d.reason) for d in plan.decisions}


def test_the_newest_n_are_kept_and_the_rest_deleted() -> None:
    tags = [tag("v1", "a", 1), tag("v2", "b", 2), tag("v3", "c", 3), tag("v4", "d", 4)]
    plan = plan_prune(tags, RetentionPolicy(keep_newest=2), ())
    assert [d.tag for d in plan.decisions] == ["v4", "v3", "v2", "v1"]  # newest first
    assert decisions(plan)["v4"] == (True, "newest 2")
    assert decisions(plan)["v3"] == (True, "newest 2")
    assert not decisions(plan)["v2"][0] and "older than the newest 2" in decisions(plan)["v2"][1]
    assert plan.delete_digests == (digest("b"), digest("a"))


def test_unknown_creation_counts_as_oldest_and_ties_go_by_tag_name() -> None:
    tags = [tag("x", "x", None), tag("b", "b", 5), tag("a", "a", 5), tag("old", "o", 0)]
    plan = plan_prune(tags, RetentionPolicy(keep_newest=3), ())
    assert [d.tag for d in plan.decisions] == ["a", "b", "old", "x"]
    assert plan.delete_digests == (digest("x"),)


def test_naive_and_aware_times_compare_as_utc() -> None:
    naive = TagState("naive", digest("n"), datetime(2025, 1, 2), ())
    aware = TagState("aware", digest("w"), datetime(2025, 1, 1, tzinfo=UTC), ())
    plan = plan_prune([aware, naive], RetentionPolicy(keep_newest=1), ())
    assert decisions(plan)["naive"][0] and not decisions(plan)["aware"][0]


def test_a_tag_matching_a_pattern_is_kept_whatever_its_age() -> None:
    tags = [tag("v1.0", "a", 1), tag("main-abc", "b", 2), tag("main-def", "c", 3)]
    plan = plan_prune(tags, RetentionPolicy(keep_newest=1, keep_patterns=("v*",)), ())
    assert decisions(plan)["v1.0"] == (True, "matches 'v*'")
    assert decisions(plan)["main-def"] == (True, "newest 1")
    assert plan.delete_digests == (digest("b"),)
    assert "matches none of 'v*'" in decisions(plan)["main-abc"][1]


def test_both_reasons_are_given_when_both_hold() -> None:
    plan = plan_prune([tag("v2", "a", 1)], RetentionPolicy(1, ("v*",)), ())
    assert decisions(plan)["v2"] == (True, "newest 1; matches 'v*'")


def test_a_protected_digest_is_never_deleted_and_says_why() -> None:
    tags = [tag("old", "a", 1), tag("new", "b", 2)]
    reasons = {digest("a"): "referenced by a live certification"}
    plan = plan_prune(tags, RetentionPolicy(keep_newest=1), reasons)
    assert decisions(plan)["old"] == (True, "referenced by a live certification")
    assert plan.delete_digests == ()
    # A plain collection of digests protects the same way, with a generic reason.
    plain = plan_prune(tags, RetentionPolicy(keep_newest=1), {digest("a")})
    assert decisions(plain)["old"] == (True, PROTECTED_REASON)


def test_a_digest_goes_only_when_every_tag_of_it_goes() -> None:
    # "latest" and "v1" are the same image: v1 is old, but the image stays for "latest".
    tags = [tag("v1", "a", 1), tag("latest", "a", 1), tag("v0", "z", 0)]
    plan = plan_prune(tags, RetentionPolicy(keep_newest=0, keep_patterns=("latest",)), ())
    assert decisions(plan)["v1"] == (True, "same image as kept tag 'latest'")
    assert plan.delete_digests == (digest("z"),)


def test_images_of_a_kept_index_are_kept_with_their_tags() -> None:
    tags = [
        tag("rev2", "idx2", 10, children=("amd2", "arm2")),
        tag("rev2-linux-amd64", "amd2", 9),
        tag("rev2-linux-arm64", "arm2", 9),
        tag("rev1", "idx1", 5, children=("amd1", "arm1")),
        tag("rev1-linux-amd64", "amd1", 4),
        # arm1 has no tag of its own; it goes with its index.
    ]
    plan = plan_prune(tags, RetentionPolicy(keep_newest=1), ())
    assert decisions(plan)["rev2-linux-arm64"] == (True, "listed by kept index 'rev2'")
    assert not decisions(plan)["rev1"][0] and not decisions(plan)["rev1-linux-amd64"][0]
    # Indexes first, then the images they listed, the untagged one included.
    assert plan.delete_digests == (digest("idx1"), digest("amd1"), digest("arm1"))


def test_an_image_shared_by_a_kept_and_a_deleted_index_stays() -> None:
    # Rebuilding an unchanged platform gives the same image: the old index must not take it.
    tags = [
        tag("rev2", "idx2", 10, children=("amd", "arm2")),
        tag("rev1", "idx1", 5, children=("amd", "arm1")),
    ]
    plan = plan_prune(tags, RetentionPolicy(keep_newest=1), ())
    assert plan.delete_digests == (digest("idx1"), digest("arm1"))


def test_children_of_a_protected_index_are_protected() -> None:
    tags = [
        tag("new", "n", 10),
        tag("rev1", "idx1", 5, children=("amd1",)),
        tag("rev1-linux-amd64", "amd1", 4),
    ]
    plan = plan_prune(tags, RetentionPolicy(keep_newest=1), {digest("idx1"): "newest index"})
    assert decisions(plan)["rev1-linux-amd64"] == (True, "listed by kept index 'rev1'")
    assert plan.delete_digests == ()


def test_keep_nothing_deletes_everything_unprotected() -> None:
    tags = [tag("a", "a", 1), tag("b", "b", 2)]
    plan = plan_prune(tags, RetentionPolicy(keep_newest=0), ())
    assert set(plan.delete_digests) == {digest("a"), digest("b")}
    assert plan.kept == () and len(plan.removed) == 2
    assert decisions(plan)["a"][1] == "its image is not in use"


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="keep_newest"):
        RetentionPolicy(keep_newest=-1)
    with pytest.raises(ValueError, match="empty pattern"):
        RetentionPolicy(keep_newest=1, keep_patterns=("",))
    with pytest.raises(ValueError, match="more than once: v1"):
        plan_prune([tag("v1", "a", 1), tag("v1", "b", 2)], RetentionPolicy(1), ())


# Invariants over generated repositories: a few images, indexes listing some of them, tags
# pointing anywhere, random policies and protections.
IMAGES = [digest(f"img{i}") for i in range(6)]
INDEXES = [digest(f"idx{i}") for i in range(3)]


@st.composite
def repositories(draw: st.DrawFn) -> tuple[list[TagState], RetentionPolicy, set[str]]:
    children = {
        index: tuple(draw(st.lists(st.sampled_from(IMAGES), min_size=1, max_size=3, unique=True)))
        for index in INDEXES
    }
    names = draw(
        st.lists(st.sampled_from(["v1", "v2", "v10", "main", "rc1", "x", "y", "z"]), unique=True)
    )
    tags = []
    for name in names:
        target = draw(st.sampled_from(IMAGES + INDEXES))
        hours = draw(st.one_of(st.none(), st.integers(0, 5)))
        created = None if hours is None else T0 + timedelta(hours=hours)
        tags.append(TagState(name, target, created, children.get(target, ())))
    policy = RetentionPolicy(
        keep_newest=draw(st.integers(0, 4)),
        keep_patterns=tuple(draw(st.lists(st.sampled_from(["v*", "rc?", "main"]), max_size=2))),
    )
    protected = set(draw(st.lists(st.sampled_from(IMAGES + INDEXES), max_size=3)))
    return tags, policy, protected


def kept_closure(plan: PrunePlan, tags: list[TagState]) -> set[str]:
    """Every digest a kept tag reaches through the indexes."""
    children = {t.digest: t.child_digests for t in tags}
    reached = {d.digest for d in plan.decisions if d.keep}
    pending = list(reached)
    while pending:
        for child in children.get(pending.pop(), ()):
            if child not in reached:
                reached.add(child)
                pending.append(child)
    return reached


@settings(max_examples=300, deadline=None)
@given(repositories())
def test_invariants(case: tuple[list[TagState], RetentionPolicy, set[str]]) -> None:
    tags, policy, protected = case
    plan = plan_prune(tags, policy, protected)
    deleted = set(plan.delete_digests)

    # One decision per tag; no digest deleted twice.
    assert sorted(d.tag for d in plan.decisions) == sorted(t.tag for t in tags)
    assert len(deleted) == len(plan.delete_digests)
    # Protected digests, and everything a kept tag reaches, are never deleted.
    assert not deleted & protected
    assert not deleted & kept_closure(plan, tags)
    # A tag goes exactly when its digest goes.
    for decision in plan.decisions:
        assert decision.keep is (decision.digest not in deleted), decision
        assert decision.reason
    # The newest N tags and every tag matching a pattern are kept.
    for decision in plan.decisions[: policy.keep_newest]:
        assert decision.keep
    for decision in plan.decisions:
        if any(fnmatchcase(decision.tag, p) for p in policy.keep_patterns):
            assert decision.keep
    # Only what the tags show is deleted: their digests and the images their indexes list.
    known = {t.digest for t in tags} | {c for t in tags for c in t.child_digests}
    assert deleted <= known
    # Indexes are deleted before the images they list.
    position = {d: i for i, d in enumerate(plan.delete_digests)}
    for state in tags:
        for child in state.child_digests:
            if state.digest in position and child in position:
                assert position[state.digest] < position[child]


@settings(max_examples=200, deadline=None)
@given(repositories())
def test_applying_a_plan_then_planning_again_deletes_nothing(
    case: tuple[list[TagState], RetentionPolicy, set[str]],
) -> None:
    tags, policy, protected = case
    plan = plan_prune(tags, policy, protected)
    survivors = [t for t in tags if t.digest not in set(plan.delete_digests)]
    assert plan_prune(survivors, policy, protected).delete_digests == ()


@settings(max_examples=200, deadline=None)
@given(repositories(), st.integers(1, 3))
def test_keeping_more_never_deletes_more(
    case: tuple[list[TagState], RetentionPolicy, set[str]], more: int
) -> None:
    tags, policy, protected = case
    generous = RetentionPolicy(policy.keep_newest + more, policy.keep_patterns)
    assert set(plan_prune(tags, generous, protected).delete_digests) <= set(
        plan_prune(tags, policy, protected).delete_digests
    )
