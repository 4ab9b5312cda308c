"""The VQ image tokenizer: shapes, quantizer vs a float64 reference, training, files, corpora."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from omnitok.tokenizers.image import (
    ImageTokenizer,
    ImageTokenizerConfig,
    ImageTokenizerError,
    code_stats,
    psnr,
)
from omnitok.tokenizers.image_io import decode_images, find_images, load_image, save_image
from omnitok.tokenizers.image_train import (
    evaluate_image_tokenizer,
    recon_loss,
    train_image_command,
    train_image_tokenizer,
)
from omnitok.tokenizers.image_vq import CosineQuantizer


def tiny(**kw) -> ImageTokenizerConfig:
    base = dict(image_size=16, downsample=4, codebook_size=32, code_dim=4, channels=8,
                n_res=1, n_mid=0)
    return ImageTokenizerConfig(**{**base, **kw})


def squares(n: int = 8, size: int = 16) -> torch.Tensor:
    """(n, 3, size, size) uint8: a square of one colour on a background of another."""
    g = torch.Generator().manual_seed(1)
    out = torch.empty(n, 3, size, size, dtype=torch.uint8)
    for i in range(n):
        fg, bg = torch.randint(0, 256, (2, 3), generator=g, dtype=torch.uint8)
        out[i] = bg[:, None, None]
        a, b = sorted(torch.randint(2, size - 2, (2,), generator=g).tolist())
        out[i, :, a:b + 2, a:b + 2] = fg[:, None, None]
    return out


@pytest.fixture(autouse=True)
def _one_thread():
    """These models are tiny: one thread avoids contention on a shared 2-core machine."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


# ---- config ---------------------------------------------------------------------------------
def test_config_round_trip_and_unknown_keys():
    cfg = tiny(downsample=8, image_size=32, norm="none")
    assert cfg.channel_mult == (1, 2, 4, 4) and cfg.grid == (4, 4)
    assert ImageTokenizerConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ImageTokenizerError, match="unknown .*'colour'"):
        ImageTokenizerConfig.from_dict({**cfg.to_dict(), "colour": 1})


@pytest.mark.parametrize("kw", [dict(downsample=3), dict(downsample=4, image_size=18),
                                dict(channel_mult=(1, 2)), dict(codebook_size=0),
                                dict(norm="batch")])
def test_config_refuses_bad_values(kw):
    with pytest.raises(ImageTokenizerError):
        tiny(**kw)


# ---- shapes and codes -----------------------------------------------------------------------
@pytest.mark.parametrize("ds,hw", [(2, (8, 8)), (4, (16, 16)), (4, (32, 48)), (8, (24, 8))])
def test_encode_decode_shapes_and_range(ds, hw):
    model = ImageTokenizer(tiny(downsample=ds)).eval()
    x = torch.rand(3, 3, *hw)
    codes = model.encode(x)
    assert codes.shape == (3, hw[0] // ds, hw[1] // ds) and codes.dtype == torch.int64
    assert 0 <= int(codes.min()) and int(codes.max()) < 32
    y = model.decode(codes)
    assert y.shape == x.shape and y.dtype == torch.float32
    assert 0 <= float(y.min()) and float(y.max()) <= 1


@pytest.mark.parametrize("ds,n_res,n_mid", [(4, 0, 0), (4, 1, 1), (8, 1, 0), (2, 2, 1)])
def test_receptive_field_is_the_region_a_code_depends_on(ds, n_res, n_mid):
    """Measured: the input pixels with a non-zero gradient of the centre code's latent."""
    cfg = tiny(image_size=128, downsample=ds, n_res=n_res, n_mid=n_mid, norm="none")
    encoder = ImageTokenizer(cfg).encoder.double()
    torch.manual_seed(0)
    for module in encoder.modules():  # generic weights (residual branches start at zero)
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.normal_(module.weight, std=0.5)
    x = torch.rand(1, 3, 128, 128, dtype=torch.float64, requires_grad=True)
    z = encoder(x)
    c = z.shape[-1] // 2
    z[0, :, c, c].square().sum().backward()
    cols = x.grad[0].abs().sum(dim=(0, 1)).nonzero().flatten()
    rows = x.grad[0].abs().sum(dim=(0, 2)).nonzero().flatten()
    assert cols.max() - cols.min() + 1 == cfg.receptive_field
    assert rows.max() - rows.min() + 1 == cfg.receptive_field


def test_encode_refuses_bad_images():
    model = ImageTokenizer(tiny())
    for bad in (torch.rand(1, 3, 18, 16), torch.rand(1, 1, 16, 16), torch.rand(3, 16, 16),
                torch.zeros(1, 3, 16, 16, dtype=torch.uint8)):
        with pytest.raises(ImageTokenizerError):
            model.encode(bad)


@pytest.mark.parametrize("codes", [torch.full((1, 2, 2), 32), torch.full((1, 2, 2), -1),
                                   torch.zeros(1, 2, 2, dtype=torch.float32),
                                   torch.zeros(2, 2, dtype=torch.long)])
def test_decode_refuses_bad_codes(codes):
    with pytest.raises(ImageTokenizerError, match="codes"):
        ImageTokenizer(tiny()).decode(codes)


def test_decode_accepts_any_integer_dtype():
    model = ImageTokenizer(tiny()).eval()
    codes = torch.randint(0, 32, (2, 3, 5))
    assert torch.equal(model.decode(codes), model.decode(codes.to(torch.int16)))


# ---- quantizer ------------------------------------------------------------------------------
def test_lookup_equals_float64_cosine_argmax():
    q = CosineQuantizer(257, 8)
    with torch.no_grad():
        q.codebook.mul_(torch.rand(257, 1) * 3 + 0.1)  # unnormalised rows: lookup must normalise
    z = torch.randn(2000, 8) * torch.rand(2000, 1) * 5
    z64, e64 = z.double(), q.codebook.detach().double()
    cos = (z64 / z64.norm(dim=1, keepdim=True)) @ (e64 / e64.norm(dim=1, keepdim=True)).t()
    assert torch.equal(q.lookup(z), cos.argmax(dim=1))
    with torch.autocast("cpu", torch.bfloat16):  # the lookup itself never runs in bf16
        assert torch.equal(q.lookup(z), cos.argmax(dim=1))


def test_straight_through_gradient_reaches_the_encoder():
    model = ImageTokenizer(tiny()).train()
    x = torch.rand(2, 3, 16, 16)
    recon, codes, aux = model(x)
    z = model.encoder(x * 2 - 1)
    expected = model.quantizer.normalized_codebook()[codes]  # (B, h, w, d)
    quantized, _, _ = model.quantizer(z)
    assert torch.allclose(quantized.permute(0, 2, 3, 1), expected, atol=1e-6)
    (recon - x).abs().mean().backward()  # reconstruction only: no path but straight-through
    for p in (model.encoder.conv_in.weight, model.encoder.conv_out.weight):
        assert p.grad is not None and p.grad.abs().sum() > 0 and torch.isfinite(p.grad).all()
    model.zero_grad()
    model(x)[2]["codebook"].backward()
    assert model.codebook.grad.abs().sum() > 0


def test_dead_codes_are_restarted_on_recent_encoder_outputs():
    q = CosineQuantizer(16, 4, dead_after=5).train()
    with torch.no_grad():
        q.codebook.copy_(torch.tensor([1.0, 0, 0, 0]).expand(16, 4))  # all codes identical
    z = torch.randn(64, 4, 1, 1)
    assert len(q.lookup(z.flatten(1)).unique()) == 1  # ties: only code 0 is ever chosen
    for _ in range(5):
        q(z)
    assert q.restarted == 0  # not dead yet
    used = set(q(z)[1].flatten().tolist())  # 6th step: restart, then lookup
    assert q.restarted == 15  # every code but the one in use
    assert torch.equal(q.codebook[0].detach(), torch.tensor([1.0, 0, 0, 0]))
    assert len(used) >= 8
    revived = F.normalize(q.codebook[1:].detach(), dim=1)
    recent = F.normalize(z.flatten(1), dim=1)
    assert ((revived @ recent.t()).max(dim=1).values > 1 - 1e-5).all()  # copies of outputs


def test_code_stats_and_psnr_against_hand_values():
    s = code_stats(torch.tensor([0, 0, 1, 3]), 8)
    assert s["used"] == 3 and s["usage"] == 3 / 8
    assert s["perplexity"] == pytest.approx(math.exp(-(0.5 * math.log(0.5) + 0.5 * math.log(0.25))))
    x = torch.zeros(1, 3, 4, 4)
    assert psnr(x + 0.1, x) == pytest.approx(20.0, abs=1e-4)


# ---- training -------------------------------------------------------------------------------
def test_tiny_training_run_improves_psnr_and_is_deterministic():
    data = squares()
    cfg = tiny(channels=16, norm="none")
    before = evaluate_image_tokenizer(ImageTokenizer(cfg), data)["psnr"]
    model, stats = train_image_tokenizer(data, cfg, steps=250, batch_size=8, lr=3e-3,
                                         threads=1, progress=False)
    after = evaluate_image_tokenizer(model, data)
    # (a constant mid-grey image scores about 10 dB on these squares)
    assert stats.steps == 250 and after["psnr"] > max(before + 8, 20), (before, after)
    again, _ = train_image_tokenizer(data, cfg, steps=3, batch_size=8, threads=1, progress=False)
    once, _ = train_image_tokenizer(data, cfg, steps=3, batch_size=8, threads=1, progress=False)
    for a, b in zip(again.state_dict().values(), once.state_dict().values()):
        assert torch.equal(a, b)


def test_reconstruction_loss_against_hand_values():
    target = torch.zeros(1, 1, 2, 2)
    recon = torch.tensor([[[[0.5, 0.0], [0.0, 0.0]]]])  # one pixel off by 0.5
    assert float(recon_loss(recon, target)) == pytest.approx(0.5 / 4 + 0.25 / 4)
    # differences: horizontal [-0.5, 0], vertical [-0.5, 0] -> mean |.| 0.25 each
    assert float(recon_loss(recon, target, 2.0)) == pytest.approx(0.1875 + 2 * (0.25 + 0.25))


def test_training_needs_a_budget_and_images():
    with pytest.raises(ImageTokenizerError, match="budget"):
        train_image_tokenizer(squares(), tiny(), progress=False)
    with pytest.raises(ImageTokenizerError, match=r"\(N, 3, 16, 16\)"):
        train_image_tokenizer(torch.zeros(2, 3, 8, 8), tiny(), steps=1, progress=False)


# ---- saving and loading ---------------------------------------------------------------------
def test_save_load_round_trip_gives_identical_codes(tmp_path):
    model = ImageTokenizer(tiny(norm="group")).eval()
    x = torch.rand(4, 3, 16, 16)
    model.save(tmp_path / "tok")
    model.save(tmp_path / "tok")  # replacing an existing folder works
    loaded = ImageTokenizer.load(tmp_path / "tok")
    assert sorted(p.name for p in (tmp_path / "tok").iterdir()) == ["config.json",
                                                                    "model.safetensors"]
    assert loaded.config == model.config and not loaded.training
    codes = model.encode(x)
    assert torch.equal(loaded.encode(x), codes)
    assert torch.equal(loaded.decode(codes), model.decode(codes))


def _one_line_error(folder) -> str:
    with pytest.raises(ImageTokenizerError) as err:
        ImageTokenizer.load(folder)
    assert "\n" not in str(err.value)
    return str(err.value)


def test_truncated_weights_and_config_mismatch_give_one_line_errors(tmp_path):
    folder = ImageTokenizer(tiny()).save(tmp_path / "tok")
    config = json.loads((folder / "config.json").read_text())
    config["config"]["channels"] = 16
    (folder / "config.json").write_text(json.dumps(config))
    msg = _one_line_error(folder)
    assert "encoder.conv_in.weight: (8, 3, 3, 3) in the weights, (16, 3, 3, 3)" in msg

    folder = ImageTokenizer(tiny()).save(tmp_path / "tok2")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    assert "corrupt or truncated" in _one_line_error(folder)
    weights.write_bytes(b"")
    assert "corrupt or truncated" in _one_line_error(folder)
    (folder / "config.json").write_text("{")
    assert "not valid JSON" in _one_line_error(folder)
    assert "no such" in _one_line_error(tmp_path / "missing")


# ---- image files ----------------------------------------------------------------------------
def _pixels(t: torch.Tensor) -> np.ndarray:
    return (t * 255).round().to(torch.uint8).permute(1, 2, 0).numpy().astype(int)


def test_rgba_is_composited_on_white(tmp_path):
    arr = np.zeros((8, 8, 4), dtype=np.uint8)
    arr[..., 0] = 255  # red ...
    arr[:4, :, 3] = 0  # ... fully transparent in the top half
    arr[4:, :, 3] = 128  # ... half transparent in the bottom half
    Image.fromarray(arr, "RGBA").save(tmp_path / "a.png")
    px = _pixels(load_image(tmp_path / "a.png", 8))
    assert (px[:4] == 255).all()
    assert (px[4:, :, 0] == 255).all()
    assert (np.abs(px[4:, :, 1:] - 127) <= 1).all()  # 255 * (1 - 128/255)


def test_palette_greyscale_and_cmyk(tmp_path):
    pal = Image.new("P", (8, 8), 1)
    pal.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    pal.save(tmp_path / "p.png")
    assert (_pixels(load_image(tmp_path / "p.png", 8)) == [10, 20, 30]).all()
    pal.info["transparency"] = 1  # that palette entry is transparent -> white
    pal.save(tmp_path / "pt.png", transparency=1)
    assert (_pixels(load_image(tmp_path / "pt.png", 8)) == 255).all()
    Image.new("L", (8, 8), 77).save(tmp_path / "l.png")
    assert (_pixels(load_image(tmp_path / "l.png", 8)) == 77).all()
    Image.new("LA", (8, 8), (0, 0)).save(tmp_path / "la.png")
    assert (_pixels(load_image(tmp_path / "la.png", 8)) == 255).all()
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(tmp_path / "c.tif")
    assert (_pixels(load_image(tmp_path / "c.tif", 8)) == [255, 0, 0]).all()


def test_16_bit_greyscale_png_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257 * 100, 32768, 65535]], dtype=np.uint16).repeat(4, axis=0)
    Image.fromarray(values).save(tmp_path / "g16.png")
    with Image.open(tmp_path / "g16.png") as im:
        assert im.mode in ("I;16", "I")  # really a 16-bit file
    px = _pixels(load_image(tmp_path / "g16.png", 4))
    assert (px[0, :, 0] == [0, 100, 128, 255]).all() and (px[..., 0] == px[..., 2]).all()


def test_non_square_images_are_center_cropped(tmp_path):
    arr = np.zeros((64, 96, 3), dtype=np.uint8)
    arr[..., 0] = np.arange(96)  # column index in red
    arr[..., 1] = np.arange(64)[:, None]
    Image.fromarray(arr).save(tmp_path / "wide.png")
    px = _pixels(load_image(tmp_path / "wide.png", 64))  # shorter side already 64: crop only
    assert (px[:, :, 0] == np.arange(16, 80)).all() and (px[:, :, 1].T == np.arange(64)).all()
    bands = np.zeros((128, 192, 3), dtype=np.uint8)
    bands[:, :64, 0], bands[:, 64:128, 1], bands[:, 128:, 2] = 255, 255, 255
    px = _pixels(load_image(Image.fromarray(bands), 64))  # -> 96 x 64, then columns 16..79
    assert (px[:, :12] == [255, 0, 0]).all()
    assert (px[:, 20:44] == [0, 255, 0]).all()
    assert (px[:, 52:] == [0, 0, 255]).all()


def test_exif_orientation_is_applied(tmp_path):
    arr = np.zeros((32, 64, 3), dtype=np.uint8)
    arr[:, :32, 0] = 255  # stored: red left half, blue right half
    arr[:, 32:, 2] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    Image.fromarray(arr).save(tmp_path / "o.png", exif=exif)
    px = _pixels(load_image(tmp_path / "o.png", 32))  # shown 32 wide x 64 tall: rows 16..47
    assert (px[2:14] == [255, 0, 0]).all() and (px[18:30] == [0, 0, 255]).all()


def test_unreadable_files_raise_one_line_errors_naming_the_file(tmp_path):
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.png").write_text("not an image\n")
    for name in ("cut.png", "text.png", "missing.png"):
        with pytest.raises(ImageTokenizerError) as err:
            load_image(tmp_path / name, 16)
        assert name in str(err.value) and "\n" not in str(err.value)


def test_save_image_writes_the_exact_8_bit_pixels(tmp_path):
    x = torch.randint(0, 256, (3, 5, 7)).float() / 255
    save_image(x, tmp_path / "out" / "x.png")
    with Image.open(tmp_path / "out" / "x.png") as im:
        assert im.format == "PNG" and im.size == (7, 5)
        got = torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1)
    assert torch.equal(got, (x * 255).round().to(torch.uint8))
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["x.png"]
    with pytest.raises(ImageTokenizerError):
        save_image(torch.rand(5, 7), tmp_path / "bad.png")


# ---- corpora --------------------------------------------------------------------------------
def _corpus(tmp_path):
    root = tmp_path / "corpus"
    (root / "images").mkdir(parents=True)
    data = squares(3)
    for i in range(3):
        save_image(data[i].float() / 255, root / "images" / f"{i}.png")
    save_image(data[0].float() / 255, tmp_path / "outside.png")
    lines = [
        {"segments": [{"text": "a"}, {"image": "images/0.png"}]},
        [{"image": "images/1.png"}, {"audio": "x.wav"}],  # a bare list of segments
        {"segments": [{"image": "../outside.png"}]},  # escapes
        {"segments": [{"image": str(tmp_path / "outside.png")}]},  # absolute, outside
        {"segments": [{"image": "images/../images/0.png"}]},  # inside: a duplicate
        {"segments": [{"image": "images/missing.png"}, {"image": 3}]},
        {"segments": [{"image": "images/2.png"}]},
    ]
    text = "\n".join(json.dumps(x) for x in lines) + "\n{not json\n\n" + '{"segments": "x"}\n'
    (root / "m.jsonl").write_text(text)
    return root


def test_manifest_paths_may_not_escape_and_bad_lines_are_counted(tmp_path):
    root = _corpus(tmp_path)
    paths, stats = find_images([root / "m.jsonl"])
    names = [p.relative_to(root.resolve()).as_posix() for p in paths]
    assert names == ["images/0.png", "images/1.png", "images/2.png"]
    assert stats.skipped == {"path escapes the manifest folder": 1, "bad path": 1,
                             "bad segment": 1, "bad JSON": 1, "no segments": 1}
    images, failed = decode_images(paths + [root / "images" / "missing.png"], 16)
    assert images.shape == (3, 3, 16, 16) and images.dtype == torch.uint8
    assert [p.name for p, _ in failed] == ["missing.png"]
    assert torch.equal(images[0], squares(3)[0])
    assert len(find_images([root / "images"])[0]) == 3  # a folder of images
    assert len(find_images([root / "images" / "0.png"])[0]) == 1  # an image file


def test_train_image_command_end_to_end(tmp_path, capsys):
    from omnitok.cli import main

    root = _corpus(tmp_path)
    rc = main(["tokenizer", "train", "image", "--data", str(root / "m.jsonl"), "--out",
               str(tmp_path / "tok"), "--size", "16", "--codebook", "16", "--steps", "2",
               "--batch-size", "2", "--threads", "1", "--res-blocks", "0", "--mid-blocks", "0",
               "--norm", "none"])
    out, err = capsys.readouterr()
    assert rc == 0 and "PSNR" in out and "5 skipped" in err and "0 unreadable" in err
    assert "receptive field 9 px" in out
    model = ImageTokenizer.load(tmp_path / "tok")
    assert model.config.image_size == 16 and model.config.codebook_size == 16
    assert (model.config.n_res, model.config.n_mid, model.config.norm) == (0, 0, "none")
    assert "Args:" in train_image_command.__doc__
