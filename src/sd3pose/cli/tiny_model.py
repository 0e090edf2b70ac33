"""A tiny, deterministic, random-weight SD3 + pose ControlNet, saved in the real folder layout.

It is the demo model when no weights are configured, and what the tests run on. Every component
is the real architecture (diffusers SD3 transformer, ControlNet and VAE; transformers CLIP x2 and
T5) at toy sizes, so the whole engine path runs unchanged. It is built to be *sensitive*: the
ControlNet's zero-initialised layers are re-randomised and the tokenizers are real (CLIP byte-level
BPE trained with `tokenizers`, a T5 unigram model trained with `sentencepiece`), so prompt,
negative prompt, guidance, pose map and strength all change the result. The images are noise.
"""

from __future__ import annotations

import copy
import io
import json
import logging
from pathlib import Path

import torch

from sd3pose.engine.loading import DEMO_MARKER
from sd3pose.errors import ModelLoadError

logger = logging.getLogger(__name__)

SEED = 20240612

# Toy sizes. Native resolution = SAMPLE_SIZE * 8 (VAE factor) = 128 px.
SAMPLE_SIZE = 16
POS_EMBED_MAX_SIZE = 64  # in patches: sides up to 64 * 2 * 8 = 1024 px
HEADS, HEAD_DIM = 2, 16
CLIP_DIM = 32  # hidden and projection size of each CLIP
T5_DIM = 64  # = joint_attention_dim (real: 4096); CLIP-L + CLIP-G widths are padded to it

# Words the tokenizers learn merges from; any other text still tokenizes (byte-level CLIP,
# full character coverage in T5), just in more pieces.
_CORPUS = """
a an the of and with in on at by for from to is are wearing standing sitting running jumping dancing
walking lying kneeling raising arms legs hands head face body pose person man woman girl boy child
people portrait photo photograph painting drawing illustration sketch render anime cartoon realistic
red green blue yellow black white orange purple pink brown gray golden silver dark light bright
dress suit shirt jacket coat hat shoes jeans skirt uniform armor costume astronaut knight dancer
chef doctor soldier wizard robot superhero athlete runner yoga ballet karate boxer
city street park beach forest mountain desert snow rain sky sun moon night day studio room stage
background foreground detailed high quality best masterpiece sharp focus cinematic lighting low
less details blurry ugly deformed bad anatomy extra fingers watermark text noise cat dog horse
beautiful happy smiling serious young old tall short long hair blonde brunette
one two three four five left right up down front back side view close wide full shot
""".split()  # noqa: SIM905 (a word list reads better as text)

_VOCAB_SIZE_CLIP = 700
_VOCAB_SIZE_T5 = 300


def _corpus_lines() -> list[str]:
    # Repeat words in a few orders so the trainers see frequent pairs and whole phrases.
    words = _CORPUS
    lines = [" ".join(words[i : i + 12]) for i in range(0, len(words), 12)]
    lines += [w.capitalize() + "." for w in words]
    return lines * 4


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map from bytes to printable characters (the BPE base alphabet)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars), strict=True))


def build_clip_tokenizer(pad_token: str = "<|endoftext|>"):
    """A CLIP tokenizer with OpenAI's vocabulary layout: bytes, bytes + '</w>', merges, specials."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import CLIPTokenizer

    alphabet = list(_bytes_to_unicode().values())
    trainer_tok = Tokenizer(models.BPE(end_of_word_suffix="</w>", unk_token="<|endoftext|>"))
    trainer_tok.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    trainer_tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(
                Regex(r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""),
                behavior="removed",
                invert=True,
            ),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=_VOCAB_SIZE_CLIP,
        initial_alphabet=alphabet,
        end_of_word_suffix="</w>",
        show_progress=False,
        special_tokens=[],
    )
    trainer_tok.train_from_iterator(_corpus_lines(), trainer=trainer)
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in _trained_merges(trainer_tok)]

    vocab_list = alphabet + [c + "</w>" for c in alphabet]
    seen = set(vocab_list)
    kept_merges = []
    for left, right in merges:
        if left in seen and right in seen and left + right not in seen:
            vocab_list.append(left + right)
            seen.add(left + right)
            kept_merges.append((left, right))
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: i for i, token in enumerate(vocab_list)}
    return CLIPTokenizer(vocab=vocab, merges=kept_merges, pad_token=pad_token, model_max_length=77)


def _trained_merges(tokenizer) -> list:
    # The trained model's merges, in rank order, from its JSON serialisation.
    return json.loads(tokenizer.to_str())["model"]["merges"]


def build_t5_tokenizer():
    """A T5 tokenizer from a sentencepiece unigram model trained here (pad 0, eos 1, unk 2 as in T5)."""
    import sentencepiece as spm
    from transformers import T5TokenizerFast

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_corpus_lines() + [_all_chars_line()]),
        model_writer=model,
        model_type="unigram",
        vocab_size=_VOCAB_SIZE_T5,
        character_coverage=1.0,
        # No normaliser: the fast tokenizer below then reproduces sentencepiece exactly without
        # needing its protobuf-serialised character map (protobuf is pinned < 5 for mediapipe).
        normalization_rule_name="identity",
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        num_threads=1,
        minloglevel=2,
    )
    processor = spm.SentencePieceProcessor(model_proto=model.getvalue())
    vocab = [(processor.id_to_piece(i), processor.get_score(i)) for i in range(processor.get_piece_size())]
    return T5TokenizerFast(vocab=vocab, extra_ids=0, model_max_length=512)


def _all_chars_line() -> str:
    # Every ASCII letter, digit and punctuation mark, so T5 never needs its unknown token for them.
    return "".join(chr(c) for c in range(33, 127))


def _randomise(module: torch.nn.Module, std: float, generator: torch.Generator) -> None:
    # Replace zero-initialised weights so the layer passes a signal through.
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * std)


def build_tiny_components(
    *, layers: int = 2, heads: int = HEADS, head_dim: int = HEAD_DIM, controlnet_layers: int = 1
) -> dict:
    """All pipeline components of the tiny model, deterministic for a fixed SEED.

    The keyword sizes let the benchmark build a larger random model with the same recipe.
    """
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        SD3ControlNetModel,
        SD3Transformer2DModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    tokenizer = build_clip_tokenizer()
    tokenizer_2 = build_clip_tokenizer(pad_token="!")  # SD3's CLIP-G tokenizer pads with "!"
    tokenizer_3 = build_t5_tokenizer()

    torch.manual_seed(SEED)
    inner = heads * head_dim
    transformer = SD3Transformer2DModel(
        sample_size=SAMPLE_SIZE,
        patch_size=2,
        in_channels=16,
        num_layers=layers,
        attention_head_dim=head_dim,
        num_attention_heads=heads,
        joint_attention_dim=T5_DIM,
        caption_projection_dim=inner,
        pooled_projection_dim=2 * CLIP_DIM,
        out_channels=16,
        pos_embed_max_size=POS_EMBED_MAX_SIZE,
    )
    # from_transformer edits the transformer's config in place: give it a copy.
    controlnet = SD3ControlNetModel.from_transformer(
        copy.deepcopy(transformer), num_layers=controlnet_layers, num_extra_conditioning_channels=0
    )
    generator = torch.Generator().manual_seed(SEED + 1)
    _randomise(controlnet.controlnet_blocks, 0.2, generator)
    _randomise(controlnet.pos_embed_input, 0.2, generator)

    torch.manual_seed(SEED + 2)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 16, 16),
        layers_per_block=1,
        latent_channels=16,
        norm_num_groups=4,
        sample_size=SAMPLE_SIZE * 8,
        scaling_factor=1.5305,
        shift_factor=0.0609,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )
    # A trained VAE's posterior is nearly a point; make the random one's too (log-variance at
    # diffusers' floor of -30), so a sampled latent and the mean agree as they do for real weights.
    with torch.no_grad():
        conv = vae.encoder.conv_out
        conv.weight[16:].zero_()
        conv.bias[16:].fill_(-30.0)

    def clip(tok, act: str, seed: int) -> CLIPTextModelWithProjection:
        torch.manual_seed(seed)
        config = CLIPTextConfig(
            vocab_size=len(tok),
            hidden_size=CLIP_DIM,
            intermediate_size=2 * CLIP_DIM,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=77,
            projection_dim=CLIP_DIM,
            hidden_act=act,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
        return CLIPTextModelWithProjection(config)

    # Real SD3: CLIP-L uses quick_gelu, OpenCLIP-G uses gelu.
    text_encoder = clip(tokenizer, "quick_gelu", SEED + 3)
    text_encoder_2 = clip(tokenizer_2, "gelu", SEED + 4)
    # SD3's CLIP-L projection is the identity: its pooled vector reads the same projected or not.
    with torch.no_grad():
        text_encoder.text_projection.weight.copy_(torch.eye(CLIP_DIM))

    torch.manual_seed(SEED + 5)
    text_encoder_3 = T5EncoderModel(
        T5Config(
            vocab_size=len(tokenizer_3),
            d_model=T5_DIM,
            d_kv=16,
            d_ff=2 * T5_DIM,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            feed_forward_proj="gated-gelu",
            is_encoder_decoder=False,
            use_cache=False,
            pad_token_id=0,
            eos_token_id=1,
        )
    )
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    for model in (transformer, controlnet, vae, text_encoder, text_encoder_2, text_encoder_3):
        model.eval()
    return {
        "transformer": transformer,
        "scheduler": scheduler,
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "text_encoder_2": text_encoder_2,
        "tokenizer_2": tokenizer_2,
        "text_encoder_3": text_encoder_3,
        "tokenizer_3": tokenizer_3,
        "controlnet": controlnet,
    }


# The keys of InstantX/SD3-Controlnet-Pose's config.json (diffusers 0.29 era, old class name).
INSTANTX_CONFIG_KEYS = (
    "attention_head_dim",
    "caption_projection_dim",
    "in_channels",
    "joint_attention_dim",
    "num_attention_heads",
    "num_layers",
    "out_channels",
    "patch_size",
    "pooled_projection_dim",
    "pos_embed_max_size",
    "sample_size",
)
INSTANTX_CLASS_NAME = "ControlNetSD3Model"


def write_tiny_model(directory: str | Path, **sizes: int) -> tuple[Path, Path]:
    """Write the tiny model to DIR/base (SD3 pipeline layout) and DIR/controlnet (InstantX layout).

    `sizes` go to build_tiny_components (the benchmark's larger random model); the default is the demo.
    """
    from diffusers import StableDiffusion3Pipeline

    directory = Path(directory)
    base_dir, controlnet_dir = directory / "base", directory / "controlnet"
    logger.info("building the tiny random-weight demo model in %s", directory)
    parts = build_tiny_components(**sizes)
    controlnet = parts.pop("controlnet")
    pipe = StableDiffusion3Pipeline(**parts)
    pipe.save_pretrained(base_dir, safe_serialization=True)
    index_path = base_dir / "model_index.json"
    index = json.loads(index_path.read_text())
    index[DEMO_MARKER] = True
    index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")

    controlnet.save_pretrained(controlnet_dir, safe_serialization=True)
    config_path = controlnet_dir / "config.json"
    full = json.loads(config_path.read_text())
    # Make the saved config look like the published InstantX one: old class name, old key set.
    config = {"_class_name": INSTANTX_CLASS_NAME, "_diffusers_version": "0.29.0.dev0"}
    config.update({key: full[key] for key in INSTANTX_CONFIG_KEYS})
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    logger.info("tiny demo model written: %s and %s", base_dir, controlnet_dir)
    return base_dir, controlnet_dir


def is_complete(directory: str | Path) -> bool:
    """True when DIR holds a written tiny (or any) model: base/model_index.json and controlnet/config.json."""
    directory = Path(directory)
    return (directory / "base" / "model_index.json").is_file() and (directory / "controlnet" / "config.json").is_file()


def ensure_demo_model(directory: str | Path) -> tuple[Path, Path]:
    """(base_dir, controlnet_dir) of the demo model in DIR, building it there first if missing.

    Built in a temporary sibling folder and renamed into place, so a concurrent reader never sees
    a half-written model.
    """
    import shutil
    import tempfile

    directory = Path(directory).expanduser()
    if not is_complete(directory):
        try:
            directory.parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=".tiny-", dir=directory.parent))
        except OSError as exc:
            raise ModelLoadError(
                f"cannot build the demo model in {str(directory)!r} ({exc.strerror or exc}); "
                "choose a writable data folder (--data-dir)"
            ) from exc
        try:
            write_tiny_model(staging)
            directory.mkdir(parents=True, exist_ok=True)
            for name in ("base", "controlnet"):
                target = directory / name
                if not target.exists():
                    (staging / name).rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        if not is_complete(directory):
            raise ModelLoadError(
                f"{str(directory)!r} holds a partial model; delete it and run `sd3pose make-tiny-model DIR` again"
            )
    return directory / "base", directory / "controlnet"
