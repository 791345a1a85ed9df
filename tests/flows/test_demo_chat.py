"""configs/demo-chat.yaml end to end, few steps: the chat demo's own data builder, template and
shipped base; its data versioned by data-chat.dvc; the champion answers conversations through
mlflow.pyfunc as evaluation answered them."""

import mlflow
import yaml

from demo.chat import build_demo_chat_data
from models.config.file import load_config
from tests.conftest import REPO


def test_the_chat_demo_registers_a_champion_that_answers_in_chat_form(project, prefect_harness):
    from flows.finetune import finetune
    from models.evaluation.serving import generate, load_adapted

    (project / "demo").symlink_to(REPO / "demo")  # the config's ./demo/base and template
    build_demo_chat_data(project / "data-chat", n_train=64, n_eval=8)
    config = load_config(
        REPO / "configs" / "demo-chat.yaml",
        ["training.max_steps=30", "training.logging_steps=10", "training.cpu_threads=1"],
    )
    result = finetune(config)
    assert result.promoted and result.version == "1"
    assert result.report["adapter"]["eval_loss"] < result.report["base"]["eval_loss"]
    # Its own data version, beside (not instead of) the plain demo's data.dvc.
    dvc = yaml.safe_load((project / "data-chat.dvc").read_text())["outs"][0]
    assert dvc["path"] == "data-chat" and dvc["md5"] == result.data_md5
    assert not (project / "data.dvc").exists()

    champion = mlflow.pyfunc.load_model("models:/loraflow-demo-chat@champion")
    conversation = [
        {"role": "user", "content": "Reverse the words: red cat sun"},
        {"role": "assistant", "content": "sun cat red"},
        {"role": "user", "content": "First word of: big tree lamp"},
    ]
    params = {"max_new_tokens": 8}
    answers = [champion.predict(conversation, params=params)[0]]
    answers += champion.predict({"prompt": "Last word of: cold moon ring"}, params=params)
    model, tok = load_adapted(str(REPO / "demo" / "base"), project / result.adapter_dir)
    expected = generate(
        model, tok, [conversation, "Last word of: cold moon ring"], max_new_tokens=8, fmt="chat"
    )
    assert answers == expected
    # Chat form: the answer alone, cut where the template ends an assistant turn.
    for answer in answers:
        assert "Answer:" not in answer and "Question:" not in answer and "</s>" not in answer
