"""Named groups ("left heart", "gluteal muscles", "cerebrum"): a name that stands for several trained terms.

Membership is never inferred: it is the curated table ``groups`` of ``curated.json`` (each group with the source
that defines it: a textbook definition whose members are all trained SAT terms, or SAT's own region list),
written into ``vocabulary.json`` by the build. The rule:

1. a group name (after the same normalisation as any name: plural, spelling, word order, word forms) is the union
   of its members;
2. a side ("left gluteal muscles", "lobes of the right lung") keeps, per member, the term of that side: a sided
   member of the other side is left out, an unsided member needs a term of that side, else the group is refused,
   naming those members ("left cerebrum": no member is sided);
3. a group with textbook members SAT never trained ("liver lobes": no quadrate lobe), or with a ``refused`` reason
   ("rib cage": with or without the thoracic vertebrae), is always refused, naming what is missing — never resolved
   to the part SAT has;
4. on a scan of a modality some member was not trained on, the whole group is refused (never a partial set),
   unless untrained modalities are allowed (``resolve.py`` checks this and names the members).

Mixed into :class:`satseg.vocabulary._phrases.Resolver`, which supplies ``vocabulary`` and ``key``.
"""

from __future__ import annotations

from satseg.vocabulary._match import Match, Refusal
from satseg.vocabulary._text import LATERALITY, phrase_key

RULE = "a named group is the union of its members (curated.json 'groups', with the source of its membership)"


class GroupReader:
    """Group look-up by name key, with or without a side (see module docstring)."""

    def group(self, key: str) -> Match | Refusal | None:
        """The group a normalised key names ("gluteal muscle"), or None."""
        name = self.vocabulary.group_keys.get(key)
        if name is None:
            return None
        record = self.vocabulary.groups[name]
        members = tuple(record["members"])
        if record["missing"] or record["refused"]:
            why = record["refused"] or (f"one of its members, {' and '.join(repr(m) for m in record['missing'])}, "
                                        f"is no trained term, and the group is not read as the members SAT has")
            return Refusal(f"{name!r} is refused as a group: {why}; name the structures you mean (trained: "
                           f"{', '.join(members)})", members, group=name)
        return Match(members, "group", f"named group {name!r} = {' + '.join(members)}", group=name)

    def side_of_group(self, side: str, base: Match | Refusal) -> Match | Refusal:
        """The members of a group on one side (rule 2), or the refusal naming the members without that side."""
        if isinstance(base, Refusal):
            return base
        terms = self.vocabulary.term_by_key
        kept, unsided = [], []
        for member in base.terms:
            first = member.split()[0]
            if first in LATERALITY:
                if first == side:
                    kept.append(member)
                continue
            sided = terms.get(phrase_key(f"{side} {member}"))
            if sided is None:
                unsided.append(member)
            else:
                kept.append(sided)
        if unsided or not kept:
            options = tuple(dict.fromkeys(kept + list(base.terms)))
            missing = ", ".join(repr(m) for m in unsided) or "none of its members"
            return Refusal(f"the {side} {base.group!r}: {missing} has no {side} term, so the group cannot be "
                           f"taken on one side; name the structures you mean ({', '.join(options)})", options,
                           group=base.group)
        return Match(tuple(kept), "group", f"{side} side of the named group {base.group!r} = {' + '.join(kept)}",
                     base.lossy, base.group)
