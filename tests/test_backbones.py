"""The real loading paths, fed with local folders that the tests write (no hub access here)."""

import json

import pytest
import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DModel, VQModel

from faceveil.errors import ConfigError
from faceveil.models.backbones import LDM_SCHEDULER, build_backbone, load_backbone, tiny_components


def _save_sd_layout(root, with_text_encoder: bool):
    parts = tiny_components(seed=3)
    parts["unet"].save_pretrained(root / "unet")
    parts["vae"].save_pretrained(root / "vae")
    parts["scheduler"].save_pretrained(root / "scheduler")
    if with_text_encoder:
        from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

        vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "a</w>": 2, "b</w>": 3}
        (root / "tokenizer").mkdir()
        (root / "tokenizer" / "vocab.json").write_text(json.dumps(vocab))
        (root / "tokenizer" / "merges.txt").write_text("#version: 0.2\n")
        CLIPTokenizer(str(root / "tokenizer" / "vocab.json"), str(root / "tokenizer" / "merges.txt"),
                      model_max_length=8).save_pretrained(root / "tokenizer")
        cfg = CLIPTextConfig(vocab_size=4, hidden_size=32, intermediate_size=37, num_hidden_layers=1,
                             num_attention_heads=4, max_position_embeddings=8, bos_token_id=0, eos_token_id=1, pad_token_id=1)
        torch.manual_seed(0)
        CLIPTextModel(cfg).save_pretrained(root / "text_encoder")
    return parts


def test_sd2_inpaint_from_local_folder_computes_and_caches_prompt(tmp_path, monkeypatch):
    monkeypatch.setenv("FACEVEIL_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "sd"
    parts = _save_sd_layout(root, with_text_encoder=True)
    bb = load_backbone(f"sd2-inpaint:{root}")
    assert bb.spec == f"sd2-inpaint:{root}" and bb.inpainting
    assert bb.prompt_embeds.shape == (1, 8, 32)
    for name, p in parts["unet"].state_dict().items():
        assert torch.equal(bb.unet.state_dict()[name], p)
    cached = list((tmp_path / "cache" / "prompt_embeds").glob("*.safetensors"))
    assert len(cached) == 1
    # The second load needs no text encoder: the cache answers.
    import shutil

    shutil.rmtree(root / "text_encoder")
    again = load_backbone(f"sd2-inpaint:{root}")
    assert torch.equal(again.prompt_embeds, bb.prompt_embeds)


def test_sd2_folder_with_shipped_prompt_embedding(tmp_path, monkeypatch):
    from safetensors.torch import save_file

    monkeypatch.setenv("FACEVEIL_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "sd"
    _save_sd_layout(root, with_text_encoder=False)
    emb = torch.randn(1, 8, 32)
    save_file({"prompt_embeds": emb}, str(root / "prompt_embeds.safetensors"))
    assert torch.equal(load_backbone(f"sd2-inpaint:{root}").prompt_embeds, emb)


def test_ldm_layout_from_local_folder(tmp_path):
    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=16, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(16, 32),
                       down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
                       norm_num_groups=8, attention_head_dim=8)
    vq = VQModel(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                 up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(16, 16), layers_per_block=1,
                 latent_channels=3, num_vq_embeddings=64, vq_embed_dim=3, norm_num_groups=8)
    unet.save_pretrained(tmp_path / "unet")
    vq.save_pretrained(tmp_path / "vqvae")
    DDIMScheduler(**LDM_SCHEDULER).save_pretrained(tmp_path / "scheduler")
    bb = load_backbone(f"ldm-ffhq:{tmp_path}")
    assert not bb.inpainting and bb.prompt_embeds is None and bb.size_multiple == 4
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        z = bb.encode(x)
        assert bb.eps(z, 10, bb.conditioning(x, torch.ones(1, 1, 32, 32))).shape == z.shape


def test_random_layouts_and_errors():
    bb = build_backbone("tiny")
    assert bb.spec == "tiny" and bb.size_multiple == 16 and not any(p.requires_grad for p in bb.unet.parameters())
    assert torch.equal(next(iter(build_backbone("tiny").unet.parameters())), next(iter(bb.unet.parameters())))
    with pytest.raises(ConfigError, match="unknown backbone"):
        load_backbone("sd3")


def test_sd2_inpaint_random_has_the_real_layout():
    bb = load_backbone("sd2-inpaint:random:0")
    cfg = bb.unet.config
    assert cfg.in_channels == 9 and cfg.cross_attention_dim == 1024 and tuple(cfg.block_out_channels) == (320, 640, 1280, 1280)
    assert isinstance(bb.vae, AutoencoderKL) and bb.vae_factor == 8 and bb.scaling_factor == 0.18215
    assert bb.prompt_embeds.shape == (1, 77, 1024)
    assert 850e6 < sum(p.numel() for p in bb.unet.parameters()) < 880e6


def _face_psnr(vae, name: str) -> float:
    from faceveil.data.samples import sample_face
    from faceveil.train.tiny_autoencoder import face_psnr

    return face_psnr(vae, sample_face(name))


def test_tiny_autoencoder_reconstructs_held_out_faces(one_thread):
    trained = load_backbone("tiny").vae
    # python -m faceveil.train.tiny_autoencoder measured 21.17, 20.90 and 25.64 dB; 0.5 dB for other CPUs' kernels.
    for name, measured in (("astronaut", 21.17), ("grace_hopper", 20.90), ("tom_hanks", 25.64)):
        assert _face_psnr(trained, name) >= measured - 0.5, name
    # The random initialisation it was trained from does not; the UNet and prompt are the same draws.
    random = tiny_components(trained_vae=False)
    assert _face_psnr(random["vae"], "astronaut") < 10.0
    parts = tiny_components()
    assert all(torch.equal(a, b) for a, b in zip(parts["unet"].state_dict().values(), random["unet"].state_dict().values()))
    assert torch.equal(parts["prompt_embeds"], random["prompt_embeds"])


def test_tiny_autoencoder_file_is_checked(tmp_path):
    from faceveil.models.backbones import TINY_VAE_PATH, load_tiny_vae_weights

    vae = tiny_components(trained_vae=False)["vae"]
    with pytest.raises(ConfigError, match="missing; reinstall"):
        load_tiny_vae_weights(vae, tmp_path / "absent.safetensors")
    altered = bytearray(TINY_VAE_PATH.read_bytes())
    altered[-1] ^= 1
    (tmp_path / "altered.safetensors").write_bytes(altered)
    with pytest.raises(ConfigError, match="was altered") as err:
        load_tiny_vae_weights(vae, tmp_path / "altered.safetensors")
    assert "python -m faceveil.train.tiny_autoencoder" in str(err.value)
