"""The export task: the merged model renders prompts as training did (template and format)."""

from models.config.run import ExportConfig
from models.config.specs import DataSpec
from models.data.chat import CHATML, PROMPT_FORMAT_FILE, load_prompt_format, prepare_tokenizer
from tasks.export import merge
from tasks.registry import VersionRef
from tests.tasks.test_registry import trained_adapter


def test_the_export_carries_the_chat_template_and_the_prompt_format(tiny_base, tmp_path):
    from transformers import AutoTokenizer

    adapter = tmp_path / "adapter"
    trained_adapter(tiny_base, adapter)
    data = DataSpec(format="chat", chat_template="chatml")
    prepare_tokenizer(AutoTokenizer.from_pretrained(adapter), data).save_pretrained(adapter)
    (adapter / PROMPT_FORMAT_FILE).write_text('{"format": "chat"}\n')
    version = VersionRef("m", "1", "run", str(tiny_base), str(adapter), {}, {})
    out = merge.fn(version=version, out_dir=str(tmp_path / "merged"), export=ExportConfig())
    assert AutoTokenizer.from_pretrained(out).chat_template == CHATML
    assert load_prompt_format(out) == "chat"

    (adapter / PROMPT_FORMAT_FILE).unlink()  # a prompt_completion adapter: nothing added
    out = merge.fn(version=version, out_dir=str(tmp_path / "plain"), export=ExportConfig())
    assert not (tmp_path / "plain" / PROMPT_FORMAT_FILE).exists()
    assert load_prompt_format(out) == "prompt_completion"
