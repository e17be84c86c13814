"""``python -m more_lightning demo``: the main job on the embedded defaults.

For now it shows the two real parts every later stage builds on, end to end on this machine:
the embedded Weaviate server (a collection of MiniLM-embedded passages, found by vector and by BM25) and the
policy (the tiny Qwen2.5-VL in NF4 with a LoRA adapter, answering an image+text chat prompt, then one training
step through the quantised layers).
"""

from __future__ import annotations

import time

from rich.console import Console
from rich.table import Table

PASSAGES = [
    ("stockholm", "Stockholm is the capital of Sweden and lies where Lake Malaren meets the Baltic Sea."),
    ("paris", "Paris is the capital and most populous city of France, on the river Seine."),
    ("alien", "Alien is a 1979 science fiction horror film directed by Ridley Scott."),
    ("photosynthesis", "Photosynthesis is the process by which plants turn light, water and CO2 into sugar."),
    ("everest", "Mount Everest, at 8,849 metres, is Earth's highest mountain above sea level."),
]
QUESTION = "Which sea is next to the Swedish capital?"


def _weaviate_part(console: Console) -> None:
    from weaviate.classes.config import Configure, DataType, Property
    from weaviate.classes.query import MetadataQuery
    from weaviate.util import generate_uuid5

    from more_lightning.experts.connection import WeaviateConfig, open_weaviate
    from more_lightning.experts.embedders import TextEmbedder
    from more_lightning.paths import cache_dir

    config = WeaviateConfig(data_dir=str(cache_dir("weaviate-data", "demo")))
    started = time.monotonic()
    with open_weaviate(config) as client:
        console.print(
            f"[green]Weaviate {client.get_meta()['version']} ready[/] in "
            f"{time.monotonic() - started:.1f} s (embedded, data in {config.resolved_data_dir()})"
        )
        embedder = TextEmbedder()
        name = "DemoPassages"
        if client.collections.exists(name):
            client.collections.delete(name)
        collection = client.collections.create(
            name,
            properties=[
                Property(name="source_id", data_type=DataType.TEXT),
                Property(name="text", data_type=DataType.TEXT),
            ],
            vector_config=Configure.Vectors.self_provided(),
        )
        vectors = embedder.embed([text for _, text in PASSAGES])
        with collection.batch.fixed_size(batch_size=64) as batch:
            for (source_id, text), vector in zip(PASSAGES, vectors, strict=True):
                batch.add_object(
                    {"source_id": source_id, "text": text},
                    vector=vector.tolist(),
                    uuid=generate_uuid5(f"demo:{source_id}"),
                )
        query = embedder.embed([QUESTION])[0].tolist()
        by_vector = collection.query.near_vector(query, limit=2, return_metadata=MetadataQuery(distance=True))
        by_bm25 = collection.query.bm25("capital Sweden", limit=2, return_metadata=MetadataQuery(score=True))
        table = Table(title=f"Query: {QUESTION!r}")
        table.add_column("search")
        table.add_column("passage")
        table.add_column("score")
        for obj in by_vector.objects:
            table.add_row("near_vector (MiniLM)", obj.properties["text"], f"distance {obj.metadata.distance:.3f}")
        for obj in by_bm25.objects:
            table.add_row("BM25 'capital Sweden'", obj.properties["text"], f"score {obj.metadata.score:.3f}")
        console.print(table)


def _policy_part(console: Console) -> None:
    import torch
    from PIL import Image

    from more_lightning.policy.loading import PolicyConfig, load_policy

    started = time.monotonic()
    model, processor = load_policy(PolicyConfig(model="tiny:qwen2.5-vl", quantization="nf4"))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    console.print(
        f"[green]Policy ready[/] in {time.monotonic() - started:.1f} s: tiny Qwen2.5-VL (random weights), "
        f"NF4 + LoRA, {trainable:,} trainable parameters"
    )
    messages = [
        {"role": "user", "content": [{"type": "text", "text": f"Origin question: {QUESTION}\n"}, {"type": "image"}]}
    ]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = processor(text=[prompt], images=[Image.new("RGB", (56, 56), (30, 90, 200))], return_tensors="pt")
    model.eval()
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=16, do_sample=True, top_k=20)
    completion = processor.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)[0]
    console.print(f"Sampled routing output (untrained, so noise): {completion!r}")
    model.train()
    loss = model(**inputs, labels=inputs["input_ids"]).loss
    loss.backward()
    console.print(f"[green]Training step through the 4-bit layers works[/]: loss {loss.item():.3f}")


def run_demo() -> int:
    console = Console()
    console.rule("more_lightning demo: embedded Weaviate + quantised LoRA policy")
    _weaviate_part(console)
    _policy_part(console)
    console.rule("done")
    return 0
