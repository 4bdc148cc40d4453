"""DNATokenizer: the id contract, vectorised encoding, soft mask, prompt tokens, reverse complement."""
import numpy as np
import pytest
import torch

from hybridna.tokenizer import (
    BOS_ID, BYTE_TO_ID, COMPLEMENT_ID, EOS_ID, N_ID, PAD_ID, SEP_ID, UNK_ID, VOCAB, DNATokenizer,
    reverse_complement_ids,
)


def test_id_contract():
    assert VOCAB == ["<pad>", "<bos>", "<eos>", "<sep>", "<unk>", "A", "C", "G", "T", "N"]
    assert (PAD_ID, BOS_ID, EOS_ID, SEP_ID, UNK_ID, N_ID) == (0, 1, 2, 3, 4, 9)
    assert BYTE_TO_ID.dtype == np.uint8 and BYTE_TO_ID.shape == (256,)
    for ch, i in zip("ACGTN", range(5, 10)):
        assert BYTE_TO_ID[ord(ch)] == i and BYTE_TO_ID[ord(ch.lower())] == i
    for ch in "RYSWKMBDHVrysw":
        assert BYTE_TO_ID[ord(ch)] == N_ID
    for ch in "XZ-.*>\n0":
        assert BYTE_TO_ID[ord(ch)] == 255
    assert COMPLEMENT_ID.tolist() == [0, 1, 2, 3, 4, 8, 7, 6, 5, 9]


def test_encode_matches_per_character_loop():
    rng = np.random.default_rng(0)
    alphabet = list("ACGTNacgtnRYSWKMBDHVryswkmbdhvX")
    seq = "".join(rng.choice(alphabet, 5000))
    tok = DNATokenizer()
    ids, mask = tok.encode(seq, return_mask=True)
    ref = {"A": 5, "C": 6, "G": 7, "T": 8, "N": 9}
    want = [ref.get(c.upper(), N_ID if c.upper() in "RYSWKMBDHV" else UNK_ID) for c in seq]
    assert ids.dtype == np.int64 and ids.tolist() == want
    assert mask.tolist() == [c.islower() for c in seq]
    with pytest.raises(ValueError, match="invalid character 'X'"):
        tok.encode("ACXG", errors="raise")
    assert tok.encode("AC\nG T\r\n").tolist() == [5, 6, 7, 8]  # whitespace skipped


def test_prompt_tokens_and_specials():
    tok = DNATokenizer()
    assert tok.add_tokens(["<HepG2>", "<K562>"]) == [10, 11]
    assert tok.add_tokens("<HepG2>") == [10]  # idempotent
    assert tok.vocab_size == 12
    assert tok.encode("<HepG2>ACgt", add_bos=True, add_eos=True).tolist() == [1, 10, 5, 6, 7, 8, 2]
    assert tok.encode("AC<sep>G<K562>").tolist() == [5, 6, 3, 7, 11]
    with pytest.raises(ValueError, match="unknown token '<Liver>'"):
        tok.encode("<Liver>ACGT")
    with pytest.raises(ValueError, match="angle brackets"):
        tok.add_tokens(["HepG2"])


def test_batch_encode_decode_roundtrip():
    tok = DNATokenizer(["<HepG2>"])
    seqs = ["ACGTacgt", "<HepG2>NNA", "g"]
    out = tok.batch_encode(seqs, add_bos=True, return_mask=True, return_tensors="pt", pad_to_multiple_of=4)
    ids, am = out["input_ids"], out["attention_mask"]
    assert ids.shape == (3, 12) and ids.dtype == torch.int64
    assert out["lengths"].tolist() == [9, 5, 2]
    assert am.sum(1).tolist() == [9, 5, 2]
    assert (ids[~am] == PAD_ID).all()
    assert tok.decode(ids[0], mask=out["soft_mask"][0]) == "ACGTacgt"
    assert tok.batch_decode(ids) == ["ACGTACGT", "<HepG2>NNA", "G"]
    assert tok.decode(ids[1], skip_special_tokens=False) == "<bos><HepG2>NNA<pad><pad><pad><pad><pad><pad><pad>"
    trunc = tok.batch_encode(seqs, max_length=3)["input_ids"]
    assert trunc.shape == (3, 3) and trunc[0].tolist() == [5, 6, 7]


def test_reverse_complement():
    tok = DNATokenizer(["<HepG2>"])
    assert tok.reverse_complement("ACCGTn") == "nACGGT"
    assert tok.reverse_complement("<HepG2>AARY") == "<HepG2>RYTT"
    ids = tok.batch_encode(["<HepG2>ACCT", "GGA"], add_bos=True, add_eos=True, return_tensors="pt")["input_ids"]
    rc = reverse_complement_ids(ids)
    assert isinstance(rc, torch.Tensor) and rc.dtype == ids.dtype
    assert tok.decode(rc[0], skip_special_tokens=False) == "<bos><HepG2>AGGT<eos>"
    assert tok.decode(rc[1], skip_special_tokens=False) == "<bos>TCC<eos><pad><pad>"
    assert torch.equal(reverse_complement_ids(rc), ids)  # an involution
    # Random ids: reverse complement of the bases equals the string-level reverse complement.
    rng = np.random.default_rng(1)
    s = "".join(rng.choice(list("ACGTN"), 257))
    assert tok.decode(tok.reverse_complement(tok.encode(s))) == tok.reverse_complement(s)


def test_save_load(tmp_path):
    tok = DNATokenizer(["<HepG2>", "<K562>"])
    tok.save_pretrained(tmp_path)
    tok2 = DNATokenizer.from_pretrained(tmp_path)
    assert tok2.vocab == tok.vocab
    cfg_only = tmp_path / "cfg_only"
    cfg_only.mkdir()
    (cfg_only / "config.json").write_text('{"added_tokens": ["<A549>"]}')
    assert DNATokenizer.from_pretrained(cfg_only).vocab == VOCAB + ["<A549>"]
    with pytest.raises(ValueError, match="does not exist"):
        DNATokenizer.from_pretrained(tmp_path / "nope")
