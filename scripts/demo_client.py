#!/usr/bin/python3
"""A Python client of optrec serve, with Debian's python3-grpcio.

Generates the Python messages and stubs of proto/optrec/v1/optrec.proto
into a temporary folder (protoc and grpc_python_plugin come with
protobuf-compiler-grpc), then for one test user of the shop world calls
Score, Retrieve and Generate and prints what comes back, like
`optrec client`.

    scripts/demo_client.py --world build/world [--address 127.0.0.1:50051]
"""

import argparse
import importlib
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_stubs(folder):
    """Compiles the API for Python into `folder` and imports it."""
    subprocess.run(
        ["protoc", "--proto_path=" + os.path.join(ROOT, "proto"),
         "--python_out=" + folder, "--grpc_python_out=" + folder,
         "--plugin=protoc-gen-grpc_python=/usr/bin/grpc_python_plugin",
         os.path.join(ROOT, "proto", "optrec", "v1", "optrec.proto")],
        check=True)
    sys.path.insert(0, folder)
    messages = importlib.import_module("optrec.v1.optrec_pb2")
    services = importlib.import_module("optrec.v1.optrec_pb2_grpc")
    return messages, services


def nth_line(path, n):
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f):
            if i == n:
                return json.loads(line)
    raise SystemExit(f"{path} has fewer than {n + 1} examples")


def set_context(context, segments):
    context["profile"].text = segments["profile"]
    context["history"].list.items.extend(segments["history"])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--world", required=True)
    parser.add_argument("--address", default="127.0.0.1:50051")
    parser.add_argument("--example", type=int, default=0)
    args = parser.parse_args()

    import grpc  # python3-grpcio
    with tempfile.TemporaryDirectory() as folder:
        pb, rpc = load_stubs(folder)
        stub = rpc.RecommenderStub(grpc.insecure_channel(args.address))

        direct = nth_line(
            os.path.join(args.world, "tasks/direct/test.jsonl"), args.example)
        segments = direct["segments"]
        print(f"User {direct['user_id']}: {segments['profile']}")
        score = pb.ScoreRequest(task="ctr")
        set_context(score.context, segments)
        positive = direct["positive_index"]
        order = [positive] + [c for c in range(10) if c != positive][:9]
        for c in order:
            candidate = score.candidates.add(id=direct["candidate_item_ids"][c])
            candidate.fields["candidate"].text = segments["candidates"][c]
        scored = stub.Score(score)
        print(f"\nScore (version {scored.version}): click probabilities")
        for i, s in enumerate(scored.scores):
            mark = "   <- clicked next" if i == 0 else ""
            print(f"  {s.score:.3f}  {segments['candidates'][order[i]]}{mark}")

        retrieve = pb.RetrieveRequest(task="next_click", k=5)
        set_context(retrieve.context, segments)
        retrieved = stub.Retrieve(retrieve)
        with open(os.path.join(args.world, "catalog.jsonl"),
                  encoding="utf-8") as f:
            titles = {j["item_id"]: j["text"] for j in map(json.loads, f)}
        print(f"\nRetrieve (version {retrieved.version}): top 5")
        for item in retrieved.items:
            print(f"  {item.score:.3f}  {item.id}  {titles.get(item.id, '')}")

        bought = nth_line(
            os.path.join(args.world, "tasks/explanation/test.jsonl"),
            args.example)
        generate = pb.GenerateRequest(task="explanation")
        set_context(generate.context, bought["segments"])
        generate.context["candidate"].text = bought["segments"]["candidate"]
        print(f"\nGenerate: why they bought {bought['segments']['candidate']}")
        text = ""
        for piece in stub.Generate(generate):
            text += piece.text
        print(f"  {text}\n  (the shopper wrote: {bought['target']})")


if __name__ == "__main__":
    main()
