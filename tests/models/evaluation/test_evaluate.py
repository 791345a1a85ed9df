"""Evaluation, whose figures gate promotion: loss on completions only, perplexity, exact match."""

import json
import math
from pathlib import Path

import pytest
import torch

from models.base_model.loading import load_base
from models.config.specs import DataSpec, EvalSpec
from models.data.splits import Example, read_split, tokenize
from models.evaluation.evaluate import completion_loss, evaluate_candidates
from models.evaluation.metrics import resolve, score
from models.evaluation.serving import generate, load_adapted
from tests.tasks.test_registry import trained_adapter

EXAMPLES = [
    Example("Q: what is red?\nA:", " a colour", 1),
    Example("Translate 'cat':", " chat, in French", 2),
    Example("2+2=", " 4", 3),
    Example("Name a planet. Answer:", " Mars is one of them", 4),
    Example("x", " y", 5),
]


def evaluate(candidates: dict, eval_file, **settings) -> dict[str, dict[str, float]]:
    """The one call into evaluate_candidates (and through it evaluate_model) in this module."""
    path = Path(eval_file)
    data = DataSpec(
        path=str(path.parent),
        train_file=path.name,
        eval_file=path.name,
        prompt_field="prompt",
        completion_field="completion",
        max_seq_len=settings.pop("max_seq_len", 64),
        too_long="truncate",
    )
    spec = EvalSpec(data=data, **{"batch_size": 2, "max_new_tokens": 4, **settings})
    return evaluate_candidates(candidates, spec)


def hand_loss(model, features) -> float:
    """Mean of -log p(token) over completion tokens, each example run alone without padding."""
    total, count = 0.0, 0
    for f in features:
        ids = torch.tensor([f["input_ids"]])
        with torch.no_grad():
            logprobs = torch.log_softmax(model(input_ids=ids).logits[0].double(), dim=-1)
        for pos, label in enumerate(f["labels"]):
            if label != -100:
                # The token at `pos` is predicted from the logits at `pos - 1`.
                total -= float(logprobs[pos - 1, label])
                count += 1
    return total / count


@pytest.fixture(scope="module")
def base(tiny_base):
    model, tok = load_base(str(tiny_base))
    model.eval()
    return model, tok


def test_completion_loss_is_the_mean_over_completion_tokens_only(base):
    model, tok = base
    features = tokenize(EXAMPLES, tok, max_seq_len=64, too_long="truncate").features
    # The completion (and eos) are labelled, the prompt is not.
    prompt_len = len(tok(EXAMPLES[0].prompt, add_special_tokens=False)["input_ids"])
    assert features[0]["labels"][:prompt_len] == [-100] * prompt_len
    assert features[0]["labels"][-1] == tok.eos_token_id
    expected = hand_loss(model, features)
    assert len({len(f["input_ids"]) for f in features}) > 1  # batches of 2+ are padded
    for batch_size in (1, 2, 3, 5):
        assert completion_loss(model, tok, features, batch_size) == pytest.approx(
            expected, rel=1e-5
        )
    # Counting prompt tokens too gives another figure: the exclusion is what is measured.
    everything = [{**f, "labels": f["input_ids"]} for f in features]
    assert abs(hand_loss(model, everything) - expected) > 1e-3


def test_padding_is_excluded_whatever_the_pad_token_is(base):
    model, tok = base
    features = tokenize(EXAMPLES[:2], tok, max_seq_len=64, too_long="truncate").features
    alone = [completion_loss(model, tok, [f], 1) for f in features]
    counts = [sum(label != -100 for label in f["labels"]) for f in features]
    pooled = sum(a * c for a, c in zip(alone, counts, strict=True)) / sum(counts)
    assert completion_loss(model, tok, features, 2) == pytest.approx(pooled, rel=1e-5)


def write_split(path, pairs):
    path.write_text("".join(json.dumps({"prompt": p, "completion": c}) + "\n" for p, c in pairs))
    return path


def test_exact_match_compares_stripped_greedy_output(base, tiny_base, tmp_path):
    model, tok = base
    prompts = [e.prompt for e in EXAMPLES[:4]]
    answers = generate(model, tok, prompts, max_new_tokens=4, batch_size=2)
    assert all(a.strip() for a in answers), answers  # non-empty, so each case below is decided
    completions = [
        "  " + answers[0].strip() + "\n",  # hit: surrounding whitespace does not count
        answers[1],  # hit: verbatim
        answers[2].strip().upper() + "Z",  # miss: different text
        answers[3] + " and more",  # miss: a prefix is not a match
    ]
    eval_file = write_split(tmp_path / "eval.jsonl", zip(prompts, completions, strict=True))
    report = evaluate({"base": (str(tiny_base), None)}, eval_file)["base"]
    assert report["exact_match"] == 0.5
    assert report["examples"] == 4.0
    features = tokenize(read_split(eval_file), tok, 64, "truncate")
    assert report["eval_loss"] == pytest.approx(hand_loss(model, features.features), rel=1e-5)
    assert report["perplexity"] == pytest.approx(math.exp(report["eval_loss"]), rel=1e-12)

    only_two = evaluate({"base": (str(tiny_base), None)}, eval_file, max_examples=2)["base"]
    assert only_two["exact_match"] == 1.0 and only_two["examples"] == 2.0


def test_every_figure_is_reported_per_slice(base, tiny_base, tmp_path):
    """With a slice field each figure comes again per slice, computed on that slice's examples
    alone; the text metrics score the same stripped greedy answers as the overall ones."""
    model, tok = base
    tasks = ["qa", "math", "qa", "misc", "math"]
    rows = [
        {"prompt": e.prompt, "completion": e.completion, "task": t}
        for e, t in zip(EXAMPLES, tasks, strict=True)
    ]
    eval_file = tmp_path / "eval.jsonl"
    eval_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    metrics = ("exact_match", "token_f1", "rouge_l", "chrf")
    report = evaluate(
        {"base": (str(tiny_base), None)}, eval_file, metrics=metrics, slice_field="task"
    )["base"]
    answers = [
        a.strip()
        for a in generate(model, tok, [e.prompt for e in EXAMPLES], max_new_tokens=4, batch_size=2)
    ]
    references = [e.completion.strip() for e in EXAMPLES]
    features = tokenize(EXAMPLES, tok, 64, "truncate").features
    for part in ("qa", "math", "misc"):
        at = [i for i, t in enumerate(tasks) if t == part]
        assert report[f"examples/{part}"] == len(at)
        expected_loss = hand_loss(model, [features[i] for i in at])
        assert report[f"eval_loss/{part}"] == pytest.approx(expected_loss, rel=1e-5)
        assert report[f"perplexity/{part}"] == pytest.approx(math.exp(expected_loss), rel=1e-5)
        for name in metrics:
            alone = score(resolve(name), [answers[i] for i in at], [references[i] for i in at])
            assert report[f"{name}/{part}"] == alone, (name, part)
    for name in metrics:
        assert report[name] == score(resolve(name), answers, references)
    assert report["eval_loss"] == pytest.approx(hand_loss(model, features), rel=1e-5)
    assert sorted(k for k in report if "/" not in k) == sorted(
        ["eval_loss", "perplexity", "examples", *metrics]
    )


def test_candidates_are_scored_on_the_same_split(tiny_base, tiny_data, tmp_path):
    _, adapter_logits = trained_adapter(tiny_base, tmp_path / "adapter")
    eval_file = tiny_data / "eval.jsonl"
    candidates = {"base": (str(tiny_base), None), "adapter": (str(tiny_base), tmp_path / "adapter")}
    report = evaluate(candidates, eval_file, max_examples=6, batch_size=4)
    assert set(report) == {"base", "adapter"}

    examples = read_split(eval_file)[:6]
    for name, (model, tok) in {
        "base": load_base(str(tiny_base)),
        "adapter": load_adapted(str(tiny_base), tmp_path / "adapter"),
    }.items():
        model.eval()
        features = tokenize(examples, tok, 64, "truncate").features
        answers = generate(model, tok, [e.prompt for e in examples], max_new_tokens=4, batch_size=4)
        pairs = zip(answers, examples, strict=True)
        hits = sum(a.strip() == e.completion.strip() for a, e in pairs)
        got = report[name]
        assert got["examples"] == 6.0
        assert got["eval_loss"] == pytest.approx(hand_loss(model, features), rel=1e-5), name
        assert got["perplexity"] == pytest.approx(math.exp(got["eval_loss"]), rel=1e-12)
        assert got["exact_match"] == hits / 6
    # The adapter was trained (B is not zero): its figures are its own, not the base's.
    assert report["adapter"]["eval_loss"] != report["base"]["eval_loss"]


def test_each_format_is_scored_on_what_it_trains(base, tiny_base, tmp_path):
    """text: every token in the loss, no answer to match; alpaca: the answer after the Alpaca
    prompt; chat: the last assistant turn, answered from the turns before it."""
    from models.data.chat import prepare_tokenizer
    from models.data.formats import alpaca_prompt
    from models.evaluation.evaluate import evaluate_model

    model, tok = base
    records = {
        "text": [{"text": "the red cat sat"}, {"text": "a dog ran far away"}],
        "alpaca": [{"instruction": "Q: what is red?", "input": "", "output": "a colour"}],
        "chat": [
            {
                "messages": [
                    {"role": "user", "content": "2+2="},
                    {"role": "assistant", "content": "4"},
                    {"role": "user", "content": "x"},
                    {"role": "assistant", "content": "y"},
                ]
            }
        ],
    }
    for fmt, rows in records.items():
        f = tmp_path / f"{fmt}.jsonl"
        f.write_text("".join(json.dumps(r) + "\n" for r in rows))
        extra = {"chat_template": "chatml"} if fmt == "chat" else {}
        data = DataSpec(path=str(tmp_path), eval_file=f.name, format=fmt, max_seq_len=128, **extra)
        spec = EvalSpec(data=data, batch_size=2, max_new_tokens=4)
        prepare_tokenizer(tok, data)
        report = evaluate_model(model, tok, spec)
        features = tokenize(read_split(f, data), tok, 128, "truncate").features
        # Nothing predicts the first token (a text's first token is labelled, but unused).
        predicted = [{**f, "labels": [-100] + f["labels"][1:]} for f in features]
        assert report["eval_loss"] == pytest.approx(hand_loss(model, predicted), rel=1e-5), fmt
        if fmt == "text":
            assert report["exact_match"] == 0.0
            assert all(label != -100 for f in features for label in f["labels"])
        elif fmt == "alpaca":
            answer = generate(model, tok, [alpaca_prompt("Q: what is red?")], max_new_tokens=4)
            assert report["exact_match"] == float(answer[0].strip() == "a colour")
    tok.chat_template = None


def test_the_answers_evaluation_scored_are_shown_side_by_side(tiny_base, tmp_path):
    """Each candidate's answers, in eval order, are the ones its exact match was computed on;
    the first n examples come back as prompt / expected / one answer per candidate."""
    from models.evaluation.evaluate import side_by_side

    eval_file = tmp_path / "eval.jsonl"
    rows = [{"prompt": e.prompt, "completion": e.completion} for e in EXAMPLES]
    eval_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = DataSpec(path=str(tmp_path), eval_file="eval.jsonl", max_seq_len=64)
    spec = EvalSpec(data=data, batch_size=2, max_new_tokens=4)
    answers: dict[str, list[str]] = {}
    report = evaluate_candidates({"base": (str(tiny_base), None)}, spec, answers)
    model, tok = load_base(str(tiny_base))
    said = [a.strip() for a in generate(model, tok, [e.prompt for e in EXAMPLES], max_new_tokens=4)]
    assert answers == {"base": said}
    expected = [e.completion.strip() for e in EXAMPLES]
    hits = sum(a == b for a, b in zip(said, expected, strict=True))
    assert report["base"]["exact_match"] == hits / len(EXAMPLES)
    shown = side_by_side(spec, answers, 3)
    assert shown == [
        {"prompt": e.prompt.strip(), "expected": e.completion.strip(), "base": a}
        for e, a in zip(EXAMPLES[:3], said[:3], strict=True)
    ]
