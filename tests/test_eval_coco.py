"""COCO CHAIR: synonym mapping, object extraction, ground truth loading and metrics by hand."""

from __future__ import annotations

import json

import pytest

from rlaifv.eval.coco import (
    CocoGroundTruth,
    Synonyms,
    coco_chair,
    extract_classes,
    extract_objects,
    load_synonyms,
    singularize,
)


def test_load_synonyms() -> None:
    syn = load_synonyms()
    assert len(syn.classes) == 80
    assert syn.classes[0] == "person" and syn.classes[-1] == "toothbrush"
    assert syn.term_to_class["motorbike"] == "motorcycle"
    assert syn.term_to_class["iphone"] == "cell phone"  # lowercased
    assert syn.max_words == 3  # "stove top oven"


def test_synonyms_from_text() -> None:
    syn = Synonyms.from_text("dog, puppy\n\nhot dog\n")
    assert syn.classes == ("dog", "hot dog")
    assert extract_classes("Puppies eat hot dogs.", syn) == ["dog", "hot dog"]


@pytest.mark.parametrize(
    "word, singular",
    [
        ("puppies", "puppy"), ("buses", "bus"), ("vases", "vase"), ("glasses", "glass"), ("benches", "bench"),
        ("horses", "horse"), ("ties", "tie"), ("knives", "knife"), ("women", "woman"), ("mice", "mouse"),
        ("people", "person"), ("children", "child"), ("policemen", "policeman"), ("calves", "calf"),
        ("glass", "glass"), ("bus", "bus"), ("skis", "skis"), ("scissors", "scissors"), ("tvs", "tv"),
        ("dogs", "dog"),
    ],
)
def test_singularize(word: str, singular: str) -> None:
    assert singularize(word, load_synonyms().words) == singular


def test_singularize_without_vocab() -> None:
    assert singularize("boxes") == "box"  # -es after x
    assert singularize("cities") == "city"
    assert singularize("cats") == "cat"


@pytest.mark.parametrize(
    "text, classes",
    [
        ("Two people and three dogs near the traffic lights.", ["person", "dog", "traffic light"]),
        ("A hot dog and a teddy bear.", ["hot dog", "teddy bear"]),  # not dog, not bear
        ("A hot-dog stand.", ["hot dog"]),
        ("A motor bike parked by a bus.", ["motorcycle", "bus"]),
        ("A baby elephant next to a passenger train.", ["elephant", "train"]),  # not person
        ("An adult dog.", ["dog"]),
        ("The seat of the toilet is up.", ["toilet"]),  # seat is not a chair here
        ("A clean toilet seat.", ["toilet"]),
        ("A wooden seat.", ["chair"]),
        ("Sports balls and wine glasses.", ["sports ball", "wine glass"]),
        ("A man on his iPhone.", ["person", "cell phone"]),
        ("A train on the train tracks.", ["train"]),
        ("Train tracks in the snow.", []),  # tracks are no train
        ("A stove top oven.", ["oven"]),
        ("Puppies, kittens and a couch.", ["dog", "cat", "couch"]),
        ("A traffic, light.", []),  # phrases do not span punctuation
        ("A sunny day.", []),
    ],
)
def test_extract_classes(text: str, classes: list[str]) -> None:
    assert extract_classes(text) == classes


def test_extract_objects_not_deduplicated() -> None:
    ms = extract_objects("A dog and another DOG, and some puppies.")
    assert [(m.term, m.cls) for m in ms] == [("dog", "dog"), ("dog", "dog"), ("puppy", "dog")]
    assert extract_classes("A dog and another DOG, and some puppies.") == ["dog"]


@pytest.fixture
def coco_files(tmp_path):
    instances = {
        "images": [{"id": 1}, {"id": 2}, {"id": 3}],
        "categories": [
            {"id": 1, "name": "person"}, {"id": 3, "name": "car"},
            {"id": 18, "name": "dog"}, {"id": 62, "name": "chair"},
        ],
        "annotations": [
            {"image_id": 1, "category_id": 1}, {"image_id": 1, "category_id": 18},
            {"image_id": 1, "category_id": 18}, {"image_id": 1, "category_id": 62},
            {"image_id": 2, "category_id": 3},
        ],
    }
    captions = {
        "annotations": [
            {"image_id": 1, "caption": "A man walking his puppy."},  # person, dog: already there
            {"image_id": 2, "caption": "A red car parked next to a bench."},  # adds bench
            {"image_id": 3, "caption": "An empty room."},  # nothing
        ]
    }
    ip, cp = tmp_path / "instances.json", tmp_path / "captions.json"
    ip.write_text(json.dumps(instances))
    cp.write_text(json.dumps(captions))
    return ip, cp


def test_ground_truth(coco_files) -> None:
    ip, cp = coco_files
    gt = CocoGroundTruth.from_annotations(ip)
    assert gt.objects == {1: {"person", "dog", "chair"}, 2: {"car"}, 3: set()}
    gt = CocoGroundTruth.from_annotations(ip, captions_path=cp)
    assert gt.objects == {1: {"person", "dog", "chair"}, 2: {"car", "bench"}, 3: set()}
    assert CocoGroundTruth.from_annotations(ip, cp, image_ids=[1]).objects == {1: {"person", "dog", "chair"}}
    assert gt.get("2") == {"car", "bench"}  # JSON string key finds the int id
    with pytest.raises(KeyError):
        gt.get(99)


def test_coco_chair(coco_files) -> None:
    ip, cp = coco_files
    gt = CocoGroundTruth.from_annotations(ip, captions_path=cp)
    answers = {
        1: "A woman walks two dogs past a cat. The dog is brown.",  # person, dog, cat(halluc.); 12 words
        "2": "A car.",  # car; 2 words
        3: "Nothing here.",  # no mention; 2 words
    }
    m = coco_chair(answers, gt)
    assert (m["n_answers"], m["n_mentions"], m["n_hallucinated_mentions"]) == (3, 4, 1)
    assert m["chair_i"] == pytest.approx(1 / 4)  # cat / {person, dog, cat, car}
    assert m["chair_s"] == pytest.approx(1 / 2)  # answer 1 / answers with mentions (1, 2)
    assert m["chair_s_all"] == pytest.approx(1 / 3)  # answer 1 / all 3
    # recall: image 1: 2/3 (person, dog of person, dog, chair); image 2: 1/2 (car of car, bench);
    # image 3 has no ground truth -> left out of the mean
    assert m["recall"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert m["recall_micro"] == pytest.approx(3 / 5)  # (2 + 1 + 0) / (3 + 2 + 0)
    assert m["avg_length"] == pytest.approx((12 + 2 + 2) / 3)
    first = m["per_answer"][0]
    assert first["mentioned"] == ["person", "dog", "cat"] and first["hallucinated"] == ["cat"]
    assert first["gt"] == ["chair", "dog", "person"]
    json.dumps(m)


def test_coco_chair_empty_and_missing(coco_files) -> None:
    gt = CocoGroundTruth.from_annotations(coco_files[0])
    m = coco_chair({}, gt)
    assert m["n_answers"] == 0 and m["chair_i"] == 0.0 and m["chair_s"] == 0.0 and m["avg_length"] == 0.0
    with pytest.raises(KeyError):
        coco_chair({42: "A dog."}, gt)
