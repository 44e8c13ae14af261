"""Data: manifests, audio segment datasets, token shards and tokenization.

    audio folder --build_manifest--> manifest.jsonl --tokenize_manifest--> token shards --TokenCrops--> LM batches
                                                    \\--AudioSegments--> codec / SSL batches
"""

from ..io import AUDIO_EXTENSIONS, find_audio
from .manifest import ManifestSummary, build_manifest, read_manifest
from .segments import AudioSegments, collate_segments, stable_randint
from .shards import ShardWriter, TokenCrops, TokenShards, collate_tokens, merge_shards, token_dtype
from .tokenize import TokenizeSummary, encode_long, merge_parts, tokenize_manifest

__all__ = [
    "AUDIO_EXTENSIONS",
    "AudioSegments",
    "ManifestSummary",
    "ShardWriter",
    "TokenCrops",
    "TokenShards",
    "TokenizeSummary",
    "build_manifest",
    "collate_segments",
    "collate_tokens",
    "encode_long",
    "find_audio",
    "merge_parts",
    "merge_shards",
    "read_manifest",
    "stable_randint",
    "token_dtype",
    "tokenize_manifest",
]
