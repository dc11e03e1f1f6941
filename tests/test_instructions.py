"""The instruction set shipped for `slm finetune` (slmkit/finetune/instructions.jsonl): rewritten byte for
byte by scripts/make_instructions.py, well-formed chat rows, and answers that are right. The checks
here recompute every answer from its prompt on their own, without the generator's helpers."""

import importlib.util
import json
import re
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "slmkit" / "finetune" / "instructions.jsonl"


def load_generator():
    spec = importlib.util.spec_from_file_location("make_instructions", ROOT / "scripts" / "make_instructions.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return [json.loads(line) for line in SHIPPED.read_text(encoding="utf-8").splitlines()]


def turns(row: dict) -> list[tuple[str, str]]:
    """(user, assistant) pairs of a row, the system message left out."""
    messages = [m for m in row["messages"] if m["role"] != "system"]
    return [(messages[i]["content"], messages[i + 1]["content"]) for i in range(0, len(messages), 2)]


def test_generator_rewrites_the_committed_file_byte_for_byte(tmp_path):
    out = tmp_path / "instructions.jsonl"
    assert load_generator().main(["--out", str(out)]) == 0
    assert out.read_bytes() == SHIPPED.read_bytes()


def test_another_seed_gives_other_rows():
    generator = load_generator()
    assert generator.render(generator.build_rows(seed=1)) != SHIPPED.read_text(encoding="utf-8")


def test_every_row_is_a_chat_with_roles_in_order(rows):
    for number, row in enumerate(rows, start=1):
        assert set(row) == {"messages", "task"}, number
        roles = [m["role"] for m in row["messages"]]
        if roles[0] == "system":
            roles = roles[1:]
        assert roles == ["user", "assistant"] * (len(roles) // 2) and roles, (number, roles)
        for message in row["messages"]:
            assert set(message) == {"role", "content"}
            assert isinstance(message["content"], str) and message["content"].strip() == message["content"] != ""


def test_tasks_are_equal_in_size_with_a_few_multi_turn_and_system_rows(rows):
    assert Counter(row["task"] for row in rows) == {"arithmetic": 200, "shakespeare": 200, "formatting": 200}
    multi_turn = Counter(row["task"] for row in rows if len(turns(row)) == 2)
    system = Counter(row["task"] for row in rows if row["messages"][0]["role"] == "system")
    assert multi_turn == system == {"arithmetic": 10, "shakespeare": 10, "formatting": 10}
    assert max(len(turns(row)) for row in rows) == 2


def test_no_two_rows_open_with_the_same_user_prompt(rows):
    # sft_data splits rows by seed, so a held-out question must never also be a training question.
    openings = [turns(row)[0][0] for row in rows]
    assert len(set(openings)) == len(openings)
    follow_ups = {turns(row)[1][0] for row in rows if len(turns(row)) == 2}
    assert not follow_ups & set(openings)


def test_shipped_file_is_small_and_ascii():
    data = SHIPPED.read_bytes()
    assert len(data) < 150_000
    assert data.isascii() and data.endswith(b"\n")


QUESTIONS = {
    r"What is (\d+) \+ (\d+)\?": "+", r"What is (\d+) plus (\d+)\?": "+", r"Add (\d+) and (\d+)\.": "+",
    r"What is (\d+) - (\d+)\?": "-", r"What is (\d+) minus (\d+)\?": "-",
    r"What is (\d+) \* (\d+)\?": "*", r"What is (\d+) times (\d+)\?": "*", r"Multiply (\d+) by (\d+)\.": "*",
}
FOLLOW_UPS = {r"Now add (\d+) to that\.": "+", r"Now subtract (\d+) from that\.": "-",
              r"Now multiply that by (\d+)\.": "*"}


def parse_question(prompt: str, previous: int | None) -> tuple[int, str, int]:
    """(a, op, b) the prompt asks for; follow-ups take a from the previous result."""
    if match := re.fullmatch(r"Subtract (\d+) from (\d+)\.", prompt):
        return int(match[2]), "-", int(match[1])
    for pattern, op in QUESTIONS.items():
        if match := re.fullmatch(pattern, prompt):
            return int(match[1]), op, int(match[2])
    for pattern, op in FOLLOW_UPS.items():
        if (match := re.fullmatch(pattern, prompt)) and previous is not None:
            return previous, op, int(match[1])
    raise AssertionError(f"unrecognised arithmetic prompt {prompt!r}")


def test_every_arithmetic_answer_is_the_right_result_of_its_question(rows):
    checked = Counter()
    for row in (r for r in rows if r["task"] == "arithmetic"):
        previous = None
        for prompt, answer in turns(row):
            a, op, b = parse_question(prompt, previous)
            match = re.fullmatch(r"(\d+) ([-+*]) (\d+) = (\d+)\.", answer)
            assert match, answer
            assert (int(match[1]), match[2], int(match[3])) == (a, op, b), (prompt, answer)
            previous = {"+": a + b, "-": a - b, "*": a * b}[op]
            assert int(match[4]) == previous, (prompt, answer)
            checked[op] += 1
    assert sum(checked.values()) == 210 and min(checked.values()) > 50


def expected_formatting(prompt: str) -> str:
    instruction, _, text = prompt.partition(": ")
    items = text.split(", ")
    return {
        "Write this in uppercase": lambda: text.upper(),
        "Write this in lowercase": lambda: text.lower(),
        "Reverse this list": lambda: ", ".join(items[::-1]),
        "Sort these words alphabetically": lambda: " ".join(sorted(text.split())),
        "How many words are in this sentence": lambda: f"The sentence has {len(text.split())} words.",
        "Turn this into a bulleted list": lambda: "\n".join("- " + item for item in items),
        "Put quotes around this": lambda: '"' + text + '"',
        "Give the first letter of each word": lambda: " ".join(word[0] for word in text.split()),
    }[instruction]()


def test_every_formatting_answer_follows_from_its_prompt(rows):
    instructions = Counter()
    for row in (r for r in rows if r["task"] == "formatting"):
        (prompt, answer), *rest = turns(row)
        assert answer == expected_formatting(prompt), prompt
        instructions[prompt.partition(":")[0]] += 1
        for follow_up, second in rest:
            assert second == {"Now write it in uppercase.": answer.upper(),
                              "Now put quotes around it.": f'"{answer}"',
                              "Now reverse the order of the words.": " ".join(answer.split()[::-1])}[follow_up]
    assert len(instructions) == 8 and min(instructions.values()) >= 20


# Facts any edition agrees on, written here by hand to check the generator's tables.
KNOWN = {"Shylock": "The Merchant of Venice", "Iago": "Othello", "Prospero": "The Tempest", "Puck":
         "A Midsummer Night's Dream", "Malvolio": "Twelfth Night", "Ophelia": "Hamlet", "Banquo": "Macbeth",
         "Cordelia": "King Lear", "Mercutio": "Romeo and Juliet", "Rosalind": "As You Like It"}
GENRES = {"Hamlet": "tragedy", "Macbeth": "tragedy", "Othello": "tragedy", "Henry V": "history",
          "Richard III": "history", "Twelfth Night": "comedy", "Much Ado About Nothing": "comedy"}


def test_play_tables_agree_with_well_known_facts():
    plays = load_generator().PLAYS
    for name, play in KNOWN.items():
        assert [p for p, facts in plays.items() if name in facts["cast"]] == [play], name
    for play, genre in GENRES.items():
        assert plays[play]["genre"] == genre, play
    assert not plays["Henry VIII"]["sole_author"]  # written with John Fletcher


def test_shakespeare_answers_never_contradict_each_other(rows):
    play_of, genre_of, kinds = {}, {}, Counter()
    for row in (r for r in rows if r["task"] == "shakespeare"):
        for prompt, answer in turns(row):
            if match := re.fullmatch(r"(.+) is a character in (.+)\.", answer):
                assert play_of.setdefault(match[1], match[2]) == match[2], answer
                assert match[1] in prompt or prompt == "How many letters are in that name?"
                kinds["character"] += 1
            elif match := re.fullmatch(r"(.+) is an? (comedy|tragedy|history)\.", answer):
                assert genre_of.setdefault(match[1], match[2]) == match[2], answer
                kinds["genre"] += 1
            elif match := re.fullmatch(r"The name (\w+) has (\d+) letters\.", answer):
                assert int(match[2]) == len(match[1]), answer
                kinds["letters"] += 1
            else:
                assert re.fullmatch(r"William Shakespeare wrote .+\.", answer), answer
                kinds["author"] += 1
    assert len(play_of) > 60 and len(genre_of) > 15 and min(kinds.values()) >= 10


def test_finetune_reader_reads_every_shipped_row_as_its_messages(rows):
    from slmkit.finetune.sft_data import read_rows

    assert read_rows(SHIPPED) == [row["messages"] for row in rows]  # the "task" key is ignored
