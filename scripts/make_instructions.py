"""Write slmkit/finetune/instructions.jsonl, the small instruction set shipped for `slm finetune`.

    python scripts/make_instructions.py                # the committed file
    python scripts/make_instructions.py --out x.jsonl  # somewhere else (the test compares the two)

Three tasks of equal size (arithmetic, questions about Shakespeare's plays, formatting), each row
`{"messages": [...], "task": ...}`. Every answer is computed here, never typed: sums by Python, letter
counts by `str`, the play facts from the tables below (cast names shared by two plays are left out,
and so are genres and authorship that scholars dispute). Seeded and standard library only, so the
same seed writes the same bytes on any machine.
"""

import argparse
import json
import os
import random
import sys
import tempfile
from pathlib import Path

SEED = 12
ROWS_PER_TASK = 200
MULTI_TURN_PER_TASK = 10
SYSTEM_PER_TASK = 10
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "slmkit" / "finetune" / "instructions.jsonl"

SYSTEM_PROMPTS = (
    "You are a helpful assistant. Answer briefly.",
    "You are a careful assistant. Give the exact answer in one line.",
    "Answer the question in one short sentence.",
)

# Genre as in the First Folio; None where modern editions call the play something else (the romances).
# Cast: only names that belong to one play (Petruchio, Claudius, Antonio, Helena... are in two or more).
# sole_author is False where a co-author is established or widely argued (Fletcher, Middleton, Peele).
PLAYS: dict[str, dict] = {
    "Hamlet": {"genre": "tragedy", "sole_author": True,
               "cast": ["Hamlet", "Ophelia", "Polonius", "Gertrude", "Horatio", "Laertes", "Rosencrantz",
                        "Guildenstern", "Fortinbras"]},
    "Macbeth": {"genre": "tragedy", "sole_author": True,
                "cast": ["Macbeth", "Lady Macbeth", "Banquo", "Macduff", "Fleance", "Donalbain", "Duncan"]},
    "Romeo and Juliet": {"genre": "tragedy", "sole_author": True,
                         "cast": ["Romeo", "Mercutio", "Tybalt", "Benvolio"]},
    "Othello": {"genre": "tragedy", "sole_author": True,
                "cast": ["Othello", "Iago", "Desdemona", "Cassio", "Roderigo", "Brabantio"]},
    "King Lear": {"genre": "tragedy", "sole_author": True, "cast": ["Lear", "Goneril", "Regan", "Cordelia"]},
    "Julius Caesar": {"genre": "tragedy", "sole_author": True, "cast": ["Cassius", "Casca"]},
    "Antony and Cleopatra": {"genre": "tragedy", "sole_author": True, "cast": ["Cleopatra", "Enobarbus", "Octavia"]},
    "Coriolanus": {"genre": "tragedy", "sole_author": True, "cast": ["Coriolanus", "Volumnia"]},
    "Titus Andronicus": {"genre": "tragedy", "sole_author": False, "cast": ["Tamora", "Lavinia"]},
    "Timon of Athens": {"genre": "tragedy", "sole_author": False, "cast": ["Timon", "Apemantus"]},
    "A Midsummer Night's Dream": {"genre": "comedy", "sole_author": True,
                                  "cast": ["Puck", "Oberon", "Titania", "Bottom", "Hermia", "Lysander"]},
    "The Merchant of Venice": {"genre": "comedy", "sole_author": True,
                               "cast": ["Shylock", "Bassanio", "Jessica", "Nerissa"]},
    "Twelfth Night": {"genre": "comedy", "sole_author": True,
                      "cast": ["Viola", "Orsino", "Olivia", "Malvolio", "Feste"]},
    "Much Ado About Nothing": {"genre": "comedy", "sole_author": True, "cast": ["Beatrice", "Benedick", "Dogberry"]},
    "As You Like It": {"genre": "comedy", "sole_author": True,
                       "cast": ["Rosalind", "Orlando", "Celia", "Touchstone"]},
    "The Taming of the Shrew": {"genre": "comedy", "sole_author": True,
                                "cast": ["Katherina", "Grumio", "Lucentio"]},
    "The Comedy of Errors": {"genre": "comedy", "sole_author": True, "cast": ["Antipholus", "Dromio"]},
    "The Two Gentlemen of Verona": {"genre": "comedy", "sole_author": True, "cast": ["Proteus", "Silvia", "Launce"]},
    "The Merry Wives of Windsor": {"genre": "comedy", "sole_author": True, "cast": []},
    "Measure for Measure": {"genre": "comedy", "sole_author": True, "cast": ["Isabella"]},
    "All's Well That Ends Well": {"genre": "comedy", "sole_author": True, "cast": ["Bertram", "Parolles"]},
    "Love's Labour's Lost": {"genre": "comedy", "sole_author": True, "cast": ["Berowne", "Costard"]},
    "The Tempest": {"genre": None, "sole_author": True,
                    "cast": ["Prospero", "Miranda", "Ariel", "Caliban", "Trinculo", "Gonzalo", "Alonso"]},
    "The Winter's Tale": {"genre": None, "sole_author": True,
                          "cast": ["Leontes", "Hermione", "Perdita", "Autolycus", "Polixenes"]},
    "Cymbeline": {"genre": None, "sole_author": True, "cast": ["Posthumus", "Iachimo"]},
    "King John": {"genre": "history", "sole_author": True, "cast": []},
    "Richard II": {"genre": "history", "sole_author": True, "cast": []},
    "Henry IV, Part 1": {"genre": "history", "sole_author": True, "cast": []},
    "Henry IV, Part 2": {"genre": "history", "sole_author": True, "cast": []},
    "Henry V": {"genre": "history", "sole_author": True, "cast": []},
    "Henry VI, Part 1": {"genre": "history", "sole_author": False, "cast": []},
    "Henry VI, Part 2": {"genre": "history", "sole_author": False, "cast": []},
    "Henry VI, Part 3": {"genre": "history", "sole_author": False, "cast": []},
    "Richard III": {"genre": "history", "sole_author": True, "cast": []},
    "Henry VIII": {"genre": "history", "sole_author": False, "cast": []},
}

WORDS = (
    "apple", "river", "stone", "cloud", "garden", "window", "lantern", "silver", "quiet", "bright", "candle",
    "morning", "forest", "meadow", "winter", "summer", "island", "harbor", "castle", "tower", "bridge", "valley",
    "mountain", "ocean", "thunder", "feather", "velvet", "copper", "amber", "basket", "mirror", "pencil",
    "ladder", "blanket", "kettle", "orchard", "cottage", "market", "violin", "trumpet", "rabbit", "falcon",
    "otter", "badger", "sparrow", "raven", "tiger", "zebra", "lemon", "cherry", "plum", "melon", "olive",
    "pepper", "ginger", "honey", "butter", "bread", "cheese", "green", "purple", "yellow", "orange", "scarlet",
    "golden", "gentle", "swift", "happy", "clever", "brave", "calm", "wild", "small", "tall", "ancient", "hidden",
    "north", "south", "east", "west", "letter", "story", "song", "dance", "dream", "sleep", "paper", "glass",
    "wooden", "iron"
)


def _arithmetic_question(rng: random.Random) -> tuple[str, int, str, int]:
    """One (prompt, a, op, b) with small operands; subtraction never goes below zero."""
    op = rng.choice("+-*")
    if op == "*":
        a, b = rng.randint(2, 20), rng.randint(2, 12)
    else:
        a, b = rng.randint(1, 99), rng.randint(1, 99)
        if op == "-" and b > a:
            a, b = b, a
    phrasing = {
        "+": ("What is {a} + {b}?", "What is {a} plus {b}?", "Add {a} and {b}."),
        "-": ("What is {a} - {b}?", "What is {a} minus {b}?", "Subtract {b} from {a}."),
        "*": ("What is {a} * {b}?", "What is {a} times {b}?", "Multiply {a} by {b}."),
    }[op]
    return rng.choice(phrasing).format(a=a, b=b), a, op, b


def _apply(a: int, op: str, b: int) -> int:
    return {"+": a + b, "-": a - b, "*": a * b}[op]


def _equation(a: int, op: str, b: int) -> str:
    return f"{a} {op} {b} = {_apply(a, op, b)}."


def arithmetic_turns(rng: random.Random, multi_turn: bool) -> list[tuple[str, str]]:
    """[(user, assistant), ...]: a sum, difference or product; with multi_turn, a follow-up on its result."""
    prompt, a, op, b = _arithmetic_question(rng)
    turns = [(prompt, _equation(a, op, b))]
    if multi_turn:
        result = _apply(a, op, b)
        follow_op = rng.choice("+-*")
        if follow_op == "-" and result < 2:  # keep every result at zero or above
            follow_op = "+"
        k = rng.randint(2, 9) if follow_op == "*" else rng.randint(1, min(20, result) if follow_op == "-" else 20)
        follow = {"+": f"Now add {k} to that.", "-": f"Now subtract {k} from that.",
                  "*": f"Now multiply that by {k}."}[follow_op]
        turns.append((follow, _equation(result, follow_op, k)))
    return turns


def _letters(name: str) -> int:
    return sum(ch.isalpha() for ch in name)


def shakespeare_pool() -> list[list[tuple[str, str]]]:
    """Every single-turn question the tables support, in table order."""
    pool = []
    for play, facts in PLAYS.items():
        if facts["sole_author"]:
            pool.append([(f"Who wrote {play}?", f"William Shakespeare wrote {play}.")])
        if facts["genre"]:
            answer = f"{play} is a {facts['genre']}."
            pool.append([(f"Is {play} a comedy, a tragedy or a history?", answer)])
            pool.append([(f"What kind of play is {play}: a comedy, a tragedy or a history?", answer)])
        for name in facts["cast"]:
            answer = f"{name} is a character in {play}."
            pool.append([(f"Which Shakespeare play has a character named {name}?", answer)])
            pool.append([(f"In which play by Shakespeare does {name} appear?", answer)])
            if " " not in name:
                pool.append([(f"How many letters are in the name {name}?",
                              f"The name {name} has {_letters(name)} letters.")])
    return pool


def shakespeare_multi_turn(rng: random.Random) -> list[tuple[str, str]]:
    """A character question, then a follow-up about that character's play or name."""
    play = rng.choice([p for p, facts in PLAYS.items() if facts["cast"]])
    facts = PLAYS[play]
    name = rng.choice(facts["cast"])
    turns = [(f"Which Shakespeare play has a character named {name}?", f"{name} is a character in {play}.")]
    follow_ups = [("How many letters are in that name?", f"The name {name} has {_letters(name)} letters.")]
    if facts["genre"]:
        follow_ups.append(("Is that play a comedy, a tragedy or a history?", f"{play} is a {facts['genre']}."))
    if facts["sole_author"]:
        follow_ups.append(("Who wrote that play?", f"William Shakespeare wrote {play}."))
    return turns + [rng.choice(follow_ups)]


def _phrase(rng: random.Random, low: int = 3, high: int = 5) -> list[str]:
    return rng.sample(WORDS, rng.randint(low, high))


def formatting_turns(rng: random.Random, task: str) -> list[tuple[str, str]]:
    """One formatting request of the named kind and its exact result."""
    words = _phrase(rng)
    phrase = " ".join(words)
    if task == "uppercase":
        return [(f"Write this in uppercase: {phrase}", phrase.upper())]
    if task == "lowercase":
        shown = phrase.title() if rng.random() < 0.5 else phrase.upper()
        return [(f"Write this in lowercase: {shown}", shown.lower())]
    if task == "reverse":
        return [(f"Reverse this list: {', '.join(words)}", ", ".join(reversed(words)))]
    if task == "sort":
        return [(f"Sort these words alphabetically: {phrase}", " ".join(sorted(words)))]
    if task == "count":
        words = _phrase(rng, 2, 8)
        return [(f"How many words are in this sentence: {' '.join(words)}",
                 f"The sentence has {len(words)} words.")]
    if task == "bullets":
        return [(f"Turn this into a bulleted list: {', '.join(words)}", "\n".join(f"- {w}" for w in words))]
    if task == "quotes":
        return [(f"Put quotes around this: {phrase}", f'"{phrase}"')]
    if task == "initials":
        return [(f"Give the first letter of each word: {phrase}", " ".join(w[0] for w in words))]
    raise ValueError(f"unknown formatting task {task!r}")


FORMATTING_TASKS = ("uppercase", "lowercase", "reverse", "sort", "count", "bullets", "quotes", "initials")
FOLLOW_UPS = {
    "Now write it in uppercase.": str.upper,
    "Now put quotes around it.": lambda text: f'"{text}"',
    "Now reverse the order of the words.": lambda text: " ".join(reversed(text.split())),
}


def formatting_multi_turn(rng: random.Random) -> list[tuple[str, str]]:
    """A lowercase or sort request, then a follow-up applied to the first answer."""
    turns = formatting_turns(rng, rng.choice(("lowercase", "sort")))
    follow = rng.choice(sorted(FOLLOW_UPS))
    return turns + [(follow, FOLLOW_UPS[follow](turns[0][1]))]


def _row(task: str, turns: list[tuple[str, str]], system: str | None) -> dict:
    messages = [{"role": "system", "content": system}] if system else []
    for user, assistant in turns:
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    return {"messages": messages, "task": task}


def build_rows(seed: int = SEED) -> list[dict]:
    """ROWS_PER_TASK rows per task, shuffled; no two rows open with the same user message, and no
    follow-up repeats a row's opening message. Of each task's rows, MULTI_TURN_PER_TASK have two user
    turns and SYSTEM_PER_TASK open with a system message."""
    rng = random.Random(seed)
    openings: set[str] = set()
    rows: list[dict] = []

    def take(task: str, draw, count: int, system: bool = False) -> None:
        added = 0
        while added < count:
            turns = draw()
            if turns[0][0] in openings:
                continue
            openings.add(turns[0][0])
            rows.append(_row(task, turns, rng.choice(SYSTEM_PROMPTS) if system else None))
            added += 1

    single = ROWS_PER_TASK - MULTI_TURN_PER_TASK - SYSTEM_PER_TASK
    take("arithmetic", lambda: arithmetic_turns(rng, multi_turn=True), MULTI_TURN_PER_TASK)
    take("arithmetic", lambda: arithmetic_turns(rng, multi_turn=False), SYSTEM_PER_TASK, system=True)
    take("arithmetic", lambda: arithmetic_turns(rng, multi_turn=False), single)

    take("shakespeare", lambda: shakespeare_multi_turn(rng), MULTI_TURN_PER_TASK)
    pool = shakespeare_pool()
    rng.shuffle(pool)
    remaining = iter(pool)
    take("shakespeare", lambda: next(remaining), SYSTEM_PER_TASK, system=True)
    take("shakespeare", lambda: next(remaining), single)

    take("formatting", lambda: formatting_multi_turn(rng), MULTI_TURN_PER_TASK)
    kinds = iter(FORMATTING_TASKS * ROWS_PER_TASK)
    take("formatting", lambda: formatting_turns(rng, next(kinds)), SYSTEM_PER_TASK, system=True)
    take("formatting", lambda: formatting_turns(rng, next(kinds)), single)

    rng.shuffle(rows)
    return rows


def render(rows: list[dict]) -> str:
    """The JSONL text: one row a line, keys in a fixed order, ASCII only."""
    return "".join(json.dumps(row, ensure_ascii=True) + "\n" for row in rows)


def write(path: Path, seed: int = SEED) -> Path:
    """Write the dataset to `path` atomically (a temporary file in the same folder, then a rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8", newline="\n") as file:
            file.write(render(build_rows(seed)))
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=SEED, help="random seed (default: %(default)s)")
    args = parser.parse_args(argv)
    path = write(args.out, args.seed)
    print(f"wrote {path} ({path.stat().st_size:,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
