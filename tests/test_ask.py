"""ask: rule-based polar questions, sandbox exactness, the LLM reply parser and both backends."""

from __future__ import annotations

import random

import pytest

from rlaifv.records import Claim
from rlaifv.sandbox.tasks import YES_NO_SUFFIX, claim_question, claim_question_negative, sentence
from rlaifv.sandbox.world import COLOURS, SHAPES, SIZES, SceneObject, World, WorldConfig
from rlaifv.stages.ask import AskConfig, ask, ask_with_raw, parse_question, polar_question
from rlaifv.stages.llm import EndpointConfig, HFChatLM, LLMConfig


def claim(text: str, i: int = 0) -> Claim:
    return Claim(candidate_id="p0#0", claim_index=i, text=text)


@pytest.mark.parametrize("text,expected", [
    ("There is a large red circle at the top left.", "Is there a large red circle at the top left?"),
    ("There are two dogs.", "Are there two dogs?"),
    ("There is no dog.", "Is there no dog?"),
    ("There were three cats.", "Were there three cats?"),
    ("There can be snow.", "Can there be snow?"),
    ("The cat is black.", "Is the cat black?"),
    ("The cat is not black.", "Is the cat not black?"),
    ("The cat isn't black.", "Is the cat not black?"),
    ("The cats were sleeping.", "Were the cats sleeping?"),
    ("The man has a hat.", "Does the man have a hat?"),
    ("The man had a hat.", "Did the man have a hat?"),
    ("The men have hats.", "Do the men have hats?"),
    ("The man has red hair.", "Does the man have red hair?"),
    ("The man has no hat.", "Does the man have no hat?"),
    ("The man has eaten.", "Has the man eaten?"),
    ("The man has not yet eaten.", "Has the man not yet eaten?"),
    ("A woman holds an umbrella.", "Does a woman hold an umbrella?"),
    ("Two people walked.", "Did two people walk?"),
    ("The dog can swim.", "Can the dog swim?"),
    ("The bus will stop.", "Will the bus stop?"),
    ("The child should wear a helmet.", "Should the child wear a helmet?"),
    ("The dog cannot swim.", "Can the dog not swim?"),
    ("The sign does not say stop.", "Does the sign not say stop?"),
    ("The sign doesn't say stop.", "Does the sign not say stop?"),
    ("The girl held a kite.", "Did the girl hold a kite?"),
    ("A dog sat on the mat.", "Did a dog sit on the mat?"),
    ("The boy ran.", "Did the boy run?"),
    ("The man wore a hat.", "Did the man wear a hat?"),
    ("The man carries a bag.", "Does the man carry a bag?"),
    ("The child carried a box.", "Did the child carry a box?"),
    ("The boy watches TV.", "Does the boy watch TV?"),
    ("The cats sleep on the sofa.", "Do the cats sleep on the sofa?"),
    ("A woman clutches a bag.", "Does a woman clutch a bag?"),
    ("The pink rose is red.", "Is the pink rose red?"),
    ("The left cup is red.", "Is the left cup red?"),
    ("The red cats are sleeping.", "Are the red cats sleeping?"),
    ("A man dressed in black stands.", "Does a man dressed in black stand?"),
    ("A woman clutches a bag that is red.", "Does a woman clutch a bag that is red?"),
    ("The man's glasses reflect light.", "Do the man's glasses reflect light?"),
    ("John is tall.", "Is John tall?"),
    ("It is brown.", "Is it brown?"),
    ("The sky was blue!", "Was the sky blue?"),
    ("The 3.5 m pole is red.", "Is the 3.5 m pole red?"),
    ('The sign says "stop".', 'Does the sign say "stop"?'),
    ("Is the cat black?", "Is the cat black?"),
])
def test_rules(text, expected):
    assert polar_question(text) == expected


@pytest.mark.parametrize("text,expected", [
    ("Holding an umbrella.", "Is it true that holding an umbrella?"),
    ("Sunny weather.", "Is it true that Sunny weather?"),
    ("Very red", "Is it true that Very red?"),
])
def test_fallback_is_never_empty(text, expected):
    assert polar_question(text) == expected


def test_sandbox_claims_reproduce_claim_question():
    """ask(sentence(obj)) == claim_question(obj) for 200 random objects and scene claims."""
    rng = random.Random(1)
    world = World(WorldConfig())
    objects = [SceneObject(rng.choice(SHAPES), rng.choice(COLOURS), rng.choice(SIZES), rng.randrange(9)) for _ in range(200)]
    for i in range(100):
        scene = world.scene(i, "test")
        objects += scene.objects + [claim_question_negative(scene, rng, world.config)]
    claims = [claim(sentence(o), i) for i, o in enumerate(objects)]
    assert [q.question for q in ask(claims)] == [claim_question(o) for o in objects]
    assert [q.question for q in ask(claims, AskConfig(suffix=""))] == [claim_question(o, suffix="") for o in objects]


def test_records_suffix_and_bad_input():
    qs = ask([claim("There is a dog.", 0), claim("The dog is brown.", 1)])
    assert [q.claim_id for q in qs] == ["p0#0/0", "p0#0/1"]
    assert qs[1].claim == "The dog is brown." and qs[1].question == f"Is the dog brown? {YES_NO_SUFFIX}"
    assert ask([]) == []
    with pytest.raises(ValueError, match="p0#0/3"):
        ask([claim("  ", 3)])
    with pytest.raises(ValueError, match="unknown backend"):
        ask([claim("A dog.")], AskConfig(backend="magic"))


@pytest.mark.parametrize("raw,expected", [
    ("Is the cat black?", "Is the cat black?"),
    ("Sure! Is the cat black? Please answer yes or no.", "Is the cat black?"),
    ("Question: is the cat black?\nAnswer: yes", "Is the cat black?"),
    ("Here you go:\n\n- **Is the 3.5 m pole red?**", "Is the 3.5 m pole red?"),
    ('"Does the man have a hat?"', "Does the man have a hat?"),
    ("The cat is black.\nWhy?\nIs it black?", "Is it black?"),
    ("The cat is black.", None),
    ("", None),
])
def test_parse_question(raw, expected):
    assert parse_question(raw) == expected


class FakeLM:
    def __init__(self, replies):
        self.replies = replies

    def chat(self, messages_list, temperature, top_p, max_new_tokens):
        assert all("Statement:" in m[-1]["content"] for m in messages_list)
        return self.replies[: len(messages_list)]


def test_llm_backend_falls_back_to_rules():
    lm = FakeLM(["Sure! Is the dog brown?", "I cannot do that."])
    out = ask_with_raw([claim("The dog is brown.", 0), claim("The man had a hat.", 1)], AskConfig(backend="llm"), lm=lm)
    assert [q.question for q, _ in out] == ["Is the dog brown? Please answer yes or no.", "Did the man have a hat? Please answer yes or no."]
    assert [raw for _, raw in out] == ["Sure! Is the dog brown?", "I cannot do that."]
    assert [raw for _, raw in ask_with_raw([claim("A dog.")])] == [None]


def test_openai_backend_against_local_server(chat_server):
    url, state = chat_server
    state["reply"] = lambda body: (200, {"choices": [{"message": {"content": "Is the dog brown?"}}]})
    cfg = AskConfig(backend="llm", suffix="", endpoint=EndpointConfig(base_url=url + "/", model="changeq", api_key_env=""))
    qs = ask([claim("The dog is brown.")], cfg)
    assert qs[0].question == "Is the dog brown?"
    headers, path, body = state["requests"][0]
    assert path == "/v1/chat/completions" and "Authorization" not in headers and body["max_tokens"] == 64


def test_hf_backend_end_to_end(tiny_chat_llm):
    cfg = AskConfig(backend="llm", llm=LLMConfig(model_path=str(tiny_chat_llm), max_new_tokens=8, temperature=0.0))
    claims = [claim("The dog is brown.", 0), claim("There is a cat.", 1)]
    out = ask_with_raw(claims, cfg, lm=HFChatLM(tiny_chat_llm))
    assert len(out) == 2 and all(isinstance(raw, str) for _, raw in out)
    assert all(q.question.endswith("?" + " Please answer yes or no.") for q, _ in out)
