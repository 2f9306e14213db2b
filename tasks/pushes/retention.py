"""Which tags of a repository to keep and which manifests to delete: a plan, nothing deleted here.

Registries delete by digest (distribution deletes a manifest and every tag pointing at it), so
the plan decides per tag but deletes per digest: a tag goes exactly when its digest goes, and a
digest goes only when every tag pointing at it goes. The caller applies ``delete_digests`` with
``RegistryClient.delete_manifest``, in the order given (indexes before the images they list).

A tag is kept when any of these holds (each gives a reason the plan shows):

- it is among the ``keep_newest`` newest tags by image creation time (an unknown time counts as
  the oldest; equal times are ordered by tag name);
- it matches one of ``keep_patterns`` (``fnmatch``, on the tag name);
- its digest is protected (the caller passes the digests in use: live certifications, the
  newest index and its children), or is also the digest of a kept tag, or is listed by a kept
  index.

The images an index lists go with it when nothing else keeps them, tagged or not.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from fnmatch import fnmatchcase

# A protected digest's reason when the caller gives none (a plain collection of digests).
PROTECTED_REASON = "protected (in use)"


@dataclass(frozen=True)
class RetentionPolicy:
    keep_newest: int
    keep_patterns: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.keep_newest < 0:
            raise ValueError(f"keep_newest must be 0 or more, not {self.keep_newest}")
        if any(not pattern for pattern in self.keep_patterns):
            raise ValueError("keep_patterns must not contain an empty pattern")


@dataclass(frozen=True)
class TagState:
    tag: str
    digest: str
    created: datetime | None
    # The digests an index lists; empty for an image manifest.
    child_digests: tuple[str, ...] = ()


@dataclass(frozen=True)
class PruneDecision:
    tag: str
    digest: str
    keep: bool
    reason: str


@dataclass(frozen=True)
class PrunePlan:
    # One per tag, newest first.
    decisions: tuple[PruneDecision, ...]
    # Digests every tag of which goes and nothing protects, in deletion order.
    delete_digests: tuple[str, ...]

    @property
    def kept(self) -> tuple[PruneDecision, ...]:
        return tuple(decision for decision in self.decisions if decision.keep)

    @property
    def removed(self) -> tuple[PruneDecision, ...]:
        return tuple(decision for decision in self.decisions if not decision.keep)


def plan_prune(
    tags: Sequence[TagState],
    policy: RetentionPolicy,
    protected_digests: Collection[str] | Mapping[str, str],
) -> PrunePlan:
    """Decide, for every tag, whether it stays, and which digests to delete.

    ``protected_digests`` is a collection of digests never to delete, or a mapping of digest to
    the reason shown for it (e.g. "referenced by a live certification"). Children of a protected
    index are protected too when the index is among ``tags``; otherwise the caller passes them.
    """
    names = [state.tag for state in tags]
    if len(set(names)) != len(names):
        duplicates = sorted({name for name in names if names.count(name) > 1})
        raise ValueError(f"tags listed more than once: {', '.join(duplicates)}")

    ordered = sorted(tags, key=_newest_first)
    own_reasons = {
        state.tag: _own_reasons(rank, state, policy) for rank, state in enumerate(ordered)
    }
    children_of: dict[str, tuple[str, ...]] = {}
    for state in ordered:
        if state.child_digests:
            children_of.setdefault(state.digest, state.child_digests)

    # Why each retained digest stays: protection first (the strongest reason to show), then
    # the kept tags, then everything a retained index lists.
    retained: dict[str, str] = {}
    if isinstance(protected_digests, Mapping):
        retained.update({digest: str(reason) for digest, reason in protected_digests.items()})
    else:
        retained.update(dict.fromkeys(protected_digests, PROTECTED_REASON))
    for state in ordered:
        if own_reasons[state.tag]:
            retained.setdefault(state.digest, f"same image as kept tag {state.tag!r}")
    _add_children(retained, children_of, _index_names(ordered))

    decisions: list[PruneDecision] = []
    for state in ordered:
        reasons = own_reasons[state.tag]
        if reasons:
            decisions.append(PruneDecision(state.tag, state.digest, True, "; ".join(reasons)))
        elif state.digest in retained:
            decisions.append(PruneDecision(state.tag, state.digest, True, retained[state.digest]))
        else:
            decisions.append(PruneDecision(state.tag, state.digest, False, _removal_reason(policy)))

    # Deleted: the digests of removed tags, then what the removed indexes list that nothing
    # retains (untagged platform images would otherwise be left behind).
    delete: dict[str, None] = {}
    for decision in decisions:
        if not decision.keep:
            delete.setdefault(decision.digest)
    pending = list(delete)
    while pending:
        for child in children_of.get(pending.pop(0), ()):
            if child not in retained and child not in delete:
                delete.setdefault(child)
                pending.append(child)
    indexes_first = [d for d in delete if d in children_of] + [
        d for d in delete if d not in children_of
    ]
    return PrunePlan(tuple(decisions), tuple(indexes_first))


def _newest_first(state: TagState) -> tuple[bool, float, str]:
    if state.created is None:
        return (True, 0.0, state.tag)
    created = state.created if state.created.tzinfo else state.created.replace(tzinfo=UTC)
    return (False, -created.timestamp(), state.tag)


def _own_reasons(rank: int, state: TagState, policy: RetentionPolicy) -> list[str]:
    reasons: list[str] = []
    if rank < policy.keep_newest:
        reasons.append(f"newest {policy.keep_newest}")
    reasons.extend(
        f"matches {pattern!r}"
        for pattern in policy.keep_patterns
        if fnmatchcase(state.tag, pattern)
    )
    return reasons


def _index_names(ordered: Sequence[TagState]) -> dict[str, str]:
    """A name for each index digest in reasons: its newest tag."""
    names: dict[str, str] = {}
    for state in ordered:
        if state.child_digests:
            names.setdefault(state.digest, state.tag)
    return names


def _add_children(
    retained: dict[str, str], children_of: Mapping[str, tuple[str, ...]], names: Mapping[str, str]
) -> None:
    pending = [digest for digest in retained if digest in children_of]
    while pending:
        index = pending.pop(0)
        for child in children_of[index]:
            if child not in retained:
                retained[child] = f"listed by kept index {names.get(index, index)!r}"
                if child in children_of:
                    pending.append(child)


def _removal_reason(policy: RetentionPolicy) -> str:
    parts = []
    if policy.keep_newest:
        parts.append(f"older than the newest {policy.keep_newest}")
    if policy.keep_patterns:
        parts.append(f"matches none of {', '.join(repr(p) for p in policy.keep_patterns)}")
    parts.append("its image is not in use")
    return ", ".join(parts)
