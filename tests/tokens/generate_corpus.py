"""Regenerates tests/tokens/corpus.json: token counts from OpenAI's own Python `tiktoken`.

The Rust test `tests/integration/tokens.rs` checks that tracegate's counts (tiktoken-rs)
agree exactly with these, for plain text and for chat messages. The chat rule is written
here independently, after OpenAI's cookbook ("How to count tokens with tiktoken").

    python3 -m pip install tiktoken==0.14.0
    python3 tests/tokens/generate_corpus.py            # run from the repository root

tiktoken downloads its BPE files on first use; offline, this script seeds tiktoken's cache
with the copies shipped inside the tiktoken-rs crate (found through `cargo metadata`), named
by the SHA-1 of their download URL. tiktoken checks each file's SHA-256 against OpenAI's
published value, so a wrong file fails loudly.
"""

import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile

ENCODINGS = ["o200k_base", "cl100k_base"]
URL = "https://openaipublic.blob.core.windows.net/encodings/{}.tiktoken"


def seed_cache():
    meta = json.loads(subprocess.check_output(["cargo", "metadata", "--format-version", "1"]))
    crate = next(p for p in meta["packages"] if p["name"] == "tiktoken-rs")
    assets = os.path.join(os.path.dirname(crate["manifest_path"]), "assets")
    cache = os.environ.setdefault("TIKTOKEN_CACHE_DIR", tempfile.mkdtemp(prefix="tiktoken-cache-"))
    for name in ENCODINGS:
        key = hashlib.sha1(URL.format(name).encode()).hexdigest()
        target = os.path.join(cache, key)
        if not os.path.exists(target):
            shutil.copy(os.path.join(assets, f"{name}.tiktoken"), target)


TEXTS = [
    "",
    "hello world",
    "Hello, world!",
    "  leading and trailing spaces  ",
    "tabs\tand\nnewlines\r\nmixed\n\n\n",
    "The quick brown fox jumps over the lazy dog. Tracing shows where the time goes.",
    "In one sentence, what does distributed tracing show?",
    "1234567890 3.14159 -42 1e10 0x1F 1,000,000",
    "def count(xs):\n    return sum(1 for _ in xs)  # comment\n",
    'fn main() { println!("{}", 1 + 2); }',
    '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}',
    "SELECT id, name FROM users WHERE created_at > NOW() - INTERVAL '1 day';",
    "日本語のテキストとカタカナ、ひらがな。",
    "中文文本，包括标点符号。",
    "한국어 텍스트입니다.",
    "Ελληνικά και русский текст и العربية",
    "emoji 😀🚀👍🏽 and flags 🇫🇷🇯🇵 and zwj 👨‍👩‍👧",
    "<|endoftext|> looks special but is ordinary text here <|im_start|>",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "               many               spaces               ",
    "don't can't won't it's I'm you're we've they'll",
    "https://example.com/path?query=1&other=two#fragment",
    "CamelCaseIdentifiersAndsnake_case_names and kebab-case-words",
    "\u00e9\u0301 combining marks and \u200b zero width",
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut labore et dolore magna aliqua. " * 8,
]

CHATS = [
    [{"role": "user", "content": "hello"}],
    [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "In one sentence, what does distributed tracing show?"},
    ],
    [
        {"role": "system", "content": "You are a helpful, pattern-following assistant that translates corporate jargon into plain English."},
        {"role": "system", "name": "example_user", "content": "New synergies will help drive top-line growth."},
        {"role": "system", "name": "example_assistant", "content": "Things working well together will increase revenue."},
        {"role": "user", "content": "This late pivot means we don't have time to boil the ocean for the client deliverable."},
    ],
    [
        {"role": "user", "content": "日本語で答えてください。"},
        {"role": "assistant", "content": "はい、わかりました。😀"},
        {"role": "user", "content": "ありがとう\n\n改行も含めて"},
    ],
    [{"role": "user", "content": ""}],
    [{"role": "developer", "content": "Be terse."}, {"role": "user", "name": "ada", "content": "Sum 1..10?"}],
]


def random_texts(count):
    rng = random.Random(20261124)
    pool = list("abcdefghijklmnopqrstuvwxyz ABCDEFGHIJ0123456789 .,;:!?'\"()[]{}<>-_/\\\n\t") + ["é", "ß", "漢", "字", "😀", "🚀", "ü", "ñ", "  ", "\n\n"]
    words = ["token", "trace", "span", "latency", "the", "of", "and", "proxy", "stream", "usage", "cost", "model"]
    out = []
    for _ in range(count):
        pieces = []
        for _ in range(rng.randint(1, 60)):
            pieces.append(rng.choice(words) if rng.random() < 0.5 else "".join(rng.choice(pool) for _ in range(rng.randint(1, 8))))
        out.append((" " if rng.random() < 0.5 else "").join(pieces))
    return out


def num_tokens_from_messages(enc, messages):
    # OpenAI cookbook rule for gpt-3.5-turbo-0613 and later / gpt-4 / gpt-4o.
    tokens_per_message, tokens_per_name = 3, 1
    n = 0
    for message in messages:
        n += tokens_per_message
        for key, value in message.items():
            n += len(enc.encode_ordinary(value))
            if key == "name":
                n += tokens_per_name
    return n + 3


def main():
    seed_cache()
    import tiktoken

    corpus = {"generator": f"tiktoken {tiktoken.__version__}", "texts": [], "chats": []}
    texts = TEXTS + random_texts(40)
    for name in ENCODINGS:
        enc = tiktoken.get_encoding(name)
        for text in texts:
            corpus["texts"].append({"encoding": name, "text": text, "tokens": len(enc.encode_ordinary(text))})
        for messages in CHATS:
            corpus["chats"].append({"encoding": name, "messages": messages, "tokens": num_tokens_from_messages(enc, messages)})
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus.json")
    with open(out, "w", encoding="utf-8") as f:
        json.dump(corpus, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"wrote {out}: {len(corpus['texts'])} texts, {len(corpus['chats'])} chats", file=sys.stderr)


if __name__ == "__main__":
    main()
