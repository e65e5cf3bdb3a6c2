"""flame.digest: the same content gives the same digest, different content a different one,
and the sampled digest of big weights reads only their ends."""

import hashlib

from flame.digest import Digest, config_digest, sampled_file_digest, sha256_file, sha256_text


def test_config_digest_ignores_key_order_and_follows_values():
    settings = {"train": {"lr": 5e-4, "batch_size": 64}, "image": {"img_size": 64}}
    reordered = {"image": {"img_size": 64}, "train": {"batch_size": 64, "lr": 5e-4}}
    assert config_digest(settings) == config_digest(reordered)
    assert config_digest(settings) != config_digest({**settings, "image": {"img_size": 128}})
    assert len(config_digest(settings)) == 64


def test_config_digest_length_cuts_the_full_digest():
    full = config_digest({"a": 1})
    assert config_digest({"a": 1}, length=12) == full[:12]
    assert len(config_digest({"a": 1}, length=12)) == 12


def test_sha256_file_and_text_match_hashlib(tmp_path):
    data = bytes(range(256)) * 1000
    path = tmp_path / "weights.bin"
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()
    # A chunk smaller than the file: the blocks are fed in order, nothing is lost between them.
    assert sha256_file(path, chunk=1000) == hashlib.sha256(data).hexdigest()
    assert sha256_text("héllo") == hashlib.sha256("héllo".encode("utf-8")).hexdigest()


def test_digest_parts_are_length_prefixed():
    assert Digest().add("ab").add("c").hexdigest() != Digest().add("a").add("bc").hexdigest()
    assert Digest().add("abc").hexdigest() != Digest().add("ab").add("c").hexdigest()
    assert Digest().add("ab").add("c").hexdigest() == Digest().add(b"ab").add(b"c").hexdigest()
    assert Digest().add("x").hexdigest(8) == Digest().add("x").hexdigest()[:8]


def test_digest_add_json_is_canonical():
    assert Digest().add_json({"b": 1, "a": [1, 2]}).hexdigest() == Digest().add_json({"a": [1, 2], "b": 1}).hexdigest()
    assert Digest().add_json({"a": 1}).hexdigest() != Digest().add_json({"a": 2}).hexdigest()


def test_digest_add_file_follows_the_bytes_not_the_path(tmp_path):
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    first.write_bytes(b'{"url": "x"}\n')
    second.write_bytes(b'{"url": "x"}\n')
    assert Digest().add_file(first).hexdigest() == Digest().add_file(second).hexdigest()
    # A file is one part, its bytes length-prefixed like any other: the same as adding them.
    assert Digest().add_file(first).hexdigest() == Digest().add(first.read_bytes()).hexdigest()
    assert Digest().add_file(first, chunk=3).hexdigest() == Digest().add_file(first).hexdigest()
    before = Digest().add_file(first).hexdigest()
    first.write_bytes(b'{"url": "y"}\n')
    assert Digest().add_file(first).hexdigest() != before


def test_digest_add_file_keeps_the_boundary_between_files(tmp_path):
    (tmp_path / "ab").write_bytes(b"ab")
    (tmp_path / "c").write_bytes(b"c")
    (tmp_path / "a").write_bytes(b"a")
    (tmp_path / "bc").write_bytes(b"bc")
    split_late = Digest().add_file(tmp_path / "ab").add_file(tmp_path / "c").hexdigest()
    split_early = Digest().add_file(tmp_path / "a").add_file(tmp_path / "bc").hexdigest()
    assert split_late != split_early


def _write_and_digest(path, data, sample):
    path.write_bytes(bytes(data))
    return sampled_file_digest(path, sample=sample)


def test_sampled_file_digest_reads_only_the_ends_of_a_big_file(tmp_path):
    sample = 16
    path = tmp_path / "model.gguf"
    data = bytearray(range(100))  # more than 2 samples: bytes 16..83 are never read
    original = _write_and_digest(path, data, sample)
    assert sampled_file_digest(path, sample=sample) == original

    middle = bytearray(data)
    middle[50] ^= 0xFF
    assert _write_and_digest(path, middle, sample) == original

    end = bytearray(data)
    end[-1] ^= 0xFF
    assert _write_and_digest(path, end, sample) != original

    start = bytearray(data)
    start[0] ^= 0xFF
    assert _write_and_digest(path, start, sample) != original

    # The size is part of the digest: one byte more, even in the unread middle, changes it.
    assert _write_and_digest(path, data[:50] + b"\0" + data[50:], sample) != original


def test_sampled_file_digest_covers_every_byte_of_a_file_under_two_samples(tmp_path):
    sample = 16
    path = tmp_path / "small.gguf"
    data = bytearray(range(24))  # between 1 and 2 samples: the second read starts where the first ended
    original = _write_and_digest(path, data, sample)
    for position in (0, 15, 16, 20, 23):
        changed = bytearray(data)
        changed[position] ^= 0xFF
        assert _write_and_digest(path, changed, sample) != original, position


def test_sampled_file_digest_names_the_file(tmp_path):
    (tmp_path / "a.gguf").write_bytes(b"weights")
    (tmp_path / "b.gguf").write_bytes(b"weights")
    assert sampled_file_digest(tmp_path / "a.gguf") != sampled_file_digest(tmp_path / "b.gguf")
    assert sampled_file_digest(tmp_path / "a.gguf") == sampled_file_digest(tmp_path / "a.gguf")
