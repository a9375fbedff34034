"""divide: rule-based claim splitting, the LLM reply parser, and both LLM backends."""

from __future__ import annotations

import random

import pytest

from rlaifv.records import Candidate
from rlaifv.sandbox.tasks import describe, noisy_description, sentence
from rlaifv.sandbox.world import COLOURS, SHAPES, SIZES, SceneObject, World, WorldConfig
from rlaifv.stages.divide import (
    DivideConfig, divide, divide_messages, is_subjective, parse_claim_lines, rule_claims, split_sentences, truncate_words,
)
from rlaifv.stages.llm import EndpointConfig, HFChatLM, LLMConfig, OpenAIChatLM, strip_list_marker


def cand(text: str, prompt_id: str = "p0", k: int = 0) -> Candidate:
    return Candidate(prompt_id=prompt_id, sample_index=k, seed=k, text=text)


# ------------------------------------------------------------------ rules

@pytest.mark.parametrize("text,expected", [
    ("There is a red circle and a blue square.", ["There is a red circle.", "There is a blue square."]),
    ("The cat is black and white.", ["The cat is black and white."]),
    ("There is a black and white cat.", ["There is a black and white cat."]),
    ("There are cats and dogs.", ["There are cats and dogs."]),
    ("The ball is between the cat and the dog.", ["The ball is between the cat and the dog."]),
    ("There is a plate with bread and butter.", ["There is a plate with bread and butter."]),
    ("The cat is black and the dog is white.", ["The cat is black.", "The dog is white."]),
    ("The cat is black, but the dog is white.", ["The cat is black.", "The dog is white."]),
    ("The man holds an umbrella and the woman wears a hat.", ["The man holds an umbrella.", "The woman wears a hat."]),
    ("The cat and the dog are brown.", ["The cat is brown.", "The dog is brown."]),
    ("Two cats and a dog are sleeping.", ["Two cats are sleeping.", "A dog is sleeping."]),
    ("There is a dog, a cat, and a bird.", ["There is a dog.", "There is a cat.", "There is a bird."]),
    ("There was a dog and two cats.", ["There was a dog.", "There were two cats."]),
    ("There is a cup and a plate on the table.", ["There is a cup on the table.", "There is a plate on the table."]),
    ("There is a red circle at the top left and a blue square at the bottom.",
     ["There is a red circle at the top left.", "There is a blue square at the bottom."]),
    ("There is a dog, which is brown, and a cat.", ["There is a dog, which is brown, and a cat."]),
])
def test_coordination(text, expected):
    assert rule_claims(text) == expected


@pytest.mark.parametrize("text,expected", [
    ("There is a dog. It is brown.", ["There is a dog.", "The dog is brown."]),
    ("There are two dogs. They are playing.", ["There are two dogs.", "The two dogs are playing."]),
    ("The cat is black. It is sleeping.", ["The cat is black.", "The cat is sleeping."]),
    ("There is a man. He holds a cup.", ["There is a man.", "The man holds a cup."]),
    ("The dog is brown. It's sleeping.", ["The dog is brown.", "The dog is sleeping."]),
    ("There is a dog and it is brown.", ["There is a dog.", "The dog is brown."]),
    ("There are two dogs. It is small.", ["There are two dogs.", "It is small."]),  # number disagrees
    ("There is a dog. It is raining.", ["There is a dog.", "It is raining."]),  # expletive "it"
    ("There is a dog and a cat. It is small.", ["There is a dog.", "There is a cat.", "It is small."]),  # ambiguous
])
def test_pronoun_resolution(text, expected):
    assert rule_claims(text) == expected


def test_opinions_questions_and_exclamations_are_dropped():
    text = ("I think the dog is happy. The scene is beautiful. Overall, a nice picture. In my opinion it is old. "
            "The dog seems tired. Is it a dog? Wow, what a dog! There is a cat!")
    assert rule_claims(text) == ["There is a cat."]
    assert is_subjective("The photo evokes a sense of calm.")
    assert not is_subjective("There is a large red circle at the top left.")


def test_sentence_splitting_abbreviations_decimals_and_lists():
    text = "There are pets, e.g. a dog. Mr. Smith holds a cup. The pole is 3.5 m tall.\n1. A cat sits.\n- A dog runs."
    assert split_sentences(text) == [
        "There are pets, e.g. a dog.", "Mr. Smith holds a cup.", "The pole is 3.5 m tall.", "A cat sits.", "A dog runs."
    ]
    assert split_sentences("The man (J. Smith) sits. It is i.e. fine.") == ["The man (J. Smith) sits.", "It is i.e. fine."]


def test_discourse_markers_dedupe_and_punctuation():
    text = "Additionally, there is a cat. In the image, there is a cat. There is a dog! There is a dog."
    assert rule_claims(text) == ["There is a cat.", "There is a dog."]
    assert rule_claims("") == [] and rule_claims("...") == []


def test_truncation_drops_cut_sentence():
    text = "There is a dog. There is a large red cat."
    assert truncate_words(text, 5) == "There is a dog."
    assert truncate_words(text, 5, whole_sentences=False) == "There is a dog. There"
    res = divide([cand(text)], cfg=DivideConfig(max_words=6))
    assert [c.text for c in res[0].claims] == ["There is a dog."]


def test_sandbox_descriptions_are_exact():
    """Every sandbox sentence is one claim, unchanged: over 200 random object lists and scenes."""
    rng = random.Random(0)
    world = World(WorldConfig())
    for i in range(200):
        cells = rng.sample(range(9), rng.randint(1, 6))
        objects = [SceneObject(rng.choice(SHAPES), rng.choice(COLOURS), rng.choice(SIZES), c) for c in cells]
        assert rule_claims(describe(objects)) == [sentence(o) for o in sorted(objects, key=lambda o: o.cell)]
        scene = world.scene(i, "test")
        text = noisy_description(scene, rng, world.config, p_extra=0.5)
        assert rule_claims(text) == text.replace(". ", ".\n").splitlines()


def test_divide_records():
    cands = [cand("There is a dog. It is brown.", k=0), cand("", k=1)]
    res = divide(cands, {"p0": "Describe."})
    assert [r.candidate_id for r in res] == ["p0#0", "p0#1"]
    assert [c.id for c in res[0].claims] == ["p0#0/0", "p0#0/1"]
    assert res[0].raw is None and res[1].claims == []
    with pytest.raises(ValueError, match="unknown backend"):
        divide(cands, cfg=DivideConfig(backend="magic"))
    with pytest.raises(ValueError, match="p0#0"):
        divide([Candidate("p0", 0, 0, None)])  # type: ignore[arg-type]


# ------------------------------------------------------------------ LLM reply parser

def test_parse_bullets_numbers_and_headers():
    raw = ("Sure! Here are the atomic facts:\n\n- There is a dog.\n* The dog is brown\n• A cat sits on a mat.\n"
           "1. The cat is black.\n2) The mat is red.\n(3) The sky is blue.\n**Objects:**\n- There is a dog.\n"
           "- " + "word " * 60 + "\n-   \n- Is it sunny?\nI hope this helps.")
    assert parse_claim_lines(raw) == [
        "There is a dog.", "The dog is brown.", "A cat sits on a mat.", "The cat is black.", "The mat is red.", "The sky is blue."
    ]


def test_parse_markup_prefixes_and_fallback_without_bullets():
    assert parse_claim_lines('- **Fact 1:** "The dog is brown."\n- `Claim: There is a cat`') == ["The dog is brown.", "There is a cat."]
    raw = "Here are the facts:\nThe dog is brown. The cat is black.\nAnswer: something\n\nThe dog is brown."
    assert parse_claim_lines(raw) == ["The dog is brown.", "The cat is black."]
    assert parse_claim_lines("") == [] and parse_claim_lines("Facts:\n- \n###") == []
    assert parse_claim_lines("- one two three four", max_words=3) == []


def test_strip_list_marker():
    assert strip_list_marker("  - a dog") == ("a dog", True)
    assert strip_list_marker("12. a dog") == ("a dog", True)
    assert strip_list_marker("1.5 m tall pole") == ("1.5 m tall pole", False)
    assert strip_list_marker("A dog sits.") == ("A dog sits.", False)


def test_divide_messages_truncate_question_plus_answer():
    msgs = divide_messages("one two three four five six", "What is it?", max_words=6)
    user = msgs[-1]["content"]
    assert "Question: What is it?" in user and "Answer: one two three\n" in user


class FakeLM:
    def __init__(self, replies):
        self.replies, self.calls = replies, []

    def chat(self, messages_list, temperature, top_p, max_new_tokens):
        self.calls.append((messages_list, temperature, top_p, max_new_tokens))
        return self.replies[: len(messages_list)]


def test_divide_llm_backend_with_fake_lm():
    lm = FakeLM(["Here are the facts:\n- There is a dog.\n- The dog is brown."])
    res = divide([cand("A brown dog."), cand("  ", k=1)], {"p0": "Describe the image."}, DivideConfig(backend="llm"), lm=lm)
    assert [c.text for c in res[0].claims] == ["There is a dog.", "The dog is brown."]
    assert res[0].raw.startswith("Here are") and res[1].raw == "" and res[1].claims == []
    msgs, temperature, top_p, max_new = lm.calls[0]
    assert len(msgs) == 1 and (temperature, top_p, max_new) == (0.2, 0.9, 256)
    assert "Describe the image." in msgs[0][-1]["content"]


# ------------------------------------------------------------------ backends

def test_openai_backend_against_local_server(chat_server, monkeypatch):
    url, state = chat_server
    state["reply"] = lambda body: (200, {"choices": [{"message": {"content": "1. There is a dog.\n2. It is brown."}}]})
    monkeypatch.setenv("RLAIFV_TEST_KEY", "sk-test")
    cfg = DivideConfig(backend="llm", endpoint=EndpointConfig(base_url=url, model="split", api_key_env="RLAIFV_TEST_KEY"))
    res = divide([cand("A brown dog."), cand("A cat.", k=1)], None, cfg)
    assert [c.text for c in res[0].claims] == ["There is a dog.", "It is brown."]
    # not in "A cat.": dropped, and the answer falls back to its rules claims (issue 12)
    assert res[1].dropped == ["There is a dog.", "It is brown."] and [c.text for c in res[1].claims] == ["A cat."]
    headers, path, body = state["requests"][0]
    assert path == "/v1/chat/completions" and headers["Authorization"] == "Bearer sk-test"
    assert body["model"] == "split" and body["temperature"] == 0.2 and body["max_tokens"] == 256
    assert body["messages"][-1]["role"] == "user" and "A brown dog." in body["messages"][-1]["content"]


def test_openai_backend_errors(chat_server):
    url, state = chat_server
    state["reply"] = lambda body: (500, {"error": "boom"})
    with pytest.raises(RuntimeError, match="HTTP 500.*boom"):
        OpenAIChatLM(url, "m").chat([[{"role": "user", "content": "hi"}]])
    state["reply"] = lambda body: (200, {"nothing": []})
    with pytest.raises(RuntimeError, match="unexpected reply"):
        OpenAIChatLM(url, "m").chat([[{"role": "user", "content": "hi"}]])
    with pytest.raises(RuntimeError, match="cannot reach"):
        OpenAIChatLM("http://127.0.0.1:9/v1", "m", timeout=2).chat([[{"role": "user", "content": "hi"}]])


def test_hf_backend_end_to_end(tiny_chat_llm):
    cfg = DivideConfig(backend="llm", llm=LLMConfig(model_path=str(tiny_chat_llm), max_new_tokens=12, batch_size=2))
    lm = HFChatLM(tiny_chat_llm, batch_size=2)
    cands = [cand("There is a dog. It is brown.", k=k) for k in range(3)]
    res = divide(cands, {"p0": "Describe the image."}, cfg, lm=lm)
    assert len(res) == 3 and all(isinstance(r.raw, str) for r in res)
    assert all(r.claims == [] or r.claims[0].id.startswith(r.candidate_id) for r in res)
    assert [r.raw for r in divide(cands, None, cfg, lm=lm)] == [r.raw for r in divide(cands, None, cfg, lm=lm)]  # seeded
    m1, m2 = [{"role": "user", "content": "A dog."}], [{"role": "user", "content": "A much longer text about a cat."}]
    assert lm.chat([m1, m2], max_new_tokens=6)[1] == lm.chat([m2], max_new_tokens=6)[0]  # per-conversation seeds
    with pytest.raises(FileNotFoundError):
        HFChatLM(tiny_chat_llm / "missing")
    with pytest.raises(ValueError, match="model_path"):
        divide(cands, None, DivideConfig(backend="llm"))
