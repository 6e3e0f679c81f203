"""Hidden checks for exercise 2 (ONNX export), run by the grader outside the sandbox.

The student's ONNX file is read as bytes and refused if any tensor in it (an initializer, a
``Constant`` node's value, a sparse tensor, anything in a subgraph or function) points to external
data, or if it holds far more operations than this model exports to. Only then is it checked with
``onnx.checker`` and run with onnxruntime, in the judge process's limited child (a graph that still
asks for too much time or memory costs the check, nothing else), on inputs the sandbox never saw,
against the solution's file for the same model.
"""

import numpy as np
import torch

from teacher.grading.judge import AnswerMissing, points

MAX_OPERATIONS = 500


def _external_tensors(message, found=None):
    """The names of every tensor anywhere in ``message`` whose data lives outside the file."""
    import onnx

    found = [] if found is None else found
    if isinstance(message, onnx.TensorProto) and (
        message.data_location == onnx.TensorProto.EXTERNAL or len(message.external_data)
    ):
        found.append(message.name or "(unnamed)")
    for field, value in message.ListFields():
        if field.type != field.TYPE_MESSAGE:
            continue
        for item in value if field.is_repeated else [value]:
            _external_tensors(item, found)
    return found


def _count_nodes(graph):
    count = len(graph.node)
    for node in graph.node:
        for attribute in node.attribute:
            count += sum(_count_nodes(g) for g in [*attribute.graphs, attribute.g] if g.node)
    return count


def questions(rng):
    return [
        {
            "id": "q0",
            "seed": rng.randrange(2**31),
            "features": rng.randint(4, 10),
            "hidden": rng.randint(8, 20),
            "classes": rng.randint(2, 6),
            "example_batch": rng.randint(2, 6),
            "batches": [1, rng.randint(7, 12), rng.randint(13, 40)],
        }
    ]


def _model_proto(answers, question):
    import onnx

    answers.succeeded(question["id"])
    data = answers.path(f"{question['id']}/model.onnx").read_bytes()
    try:
        model = onnx.load_from_string(data)
    except Exception as exc:  # noqa: BLE001 - any damage in a student's file
        raise AnswerMissing(f"model.onnx is not an ONNX model ({type(exc).__name__})") from None
    _refuse_what_it_must_not_run(model)
    return model, data


def _refuse_what_it_must_not_run(model):
    """Raises AnswerMissing (which every check passes on as its verdict) for a file never run."""
    external = _external_tensors(model)
    if external:
        raise AnswerMissing(
            f"{len(external)} tensors of the file ({', '.join(external[:3])}) point to external data "
            "(a .onnx.data sidecar or another file): export one self-contained file "
            "(external_data=False)"
        )
    operations = _count_nodes(model.graph) + sum(len(f.node) for f in model.functions)
    if operations > MAX_OPERATIONS:
        raise AnswerMissing(
            f"the file holds {operations} operations; this small model exports to a few dozen: "
            "export the model you were given"
        )
    control_flow = sorted({n.op_type for n in model.graph.node} & {"Loop", "Scan", "If"})
    if control_flow:
        raise AnswerMissing(
            f"the file holds control flow ({', '.join(control_flow)}) that this model does not "
            "have: export the model you were given"
        )


def _run(answers, question, x):
    import onnxruntime as ort

    _, data = _model_proto(answers, question)
    try:
        session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    except Exception as exc:
        if "allocate" in str(exc).lower():
            raise AnswerMissing(
                "running model.onnx asked for more memory than the judge allows: this model's "
                "tensors are a few kB; export the model you were given"
            ) from None
        raise
    return out


def _inputs(question, batch, salt):
    generator = torch.Generator().manual_seed(question["seed"] + salt)
    return torch.randn(batch, question["features"], generator=generator)


@points(1)
def test_writes_one_valid_file(student, questions):
    import onnx

    for question in questions:
        model, _ = _model_proto(student, question)
        extra = [n for n in student.listing(question["id"]) if n != "model.onnx"]
        assert not extra, f"besides model.onnx the export wrote {extra}: export one file"
        try:
            onnx.checker.check_model(model, full_check=True)
        except Exception as exc:  # noqa: BLE001
            raise AssertionError(f"onnx.checker rejects the file: {str(exc)[:500]}") from None


@points(1)
def test_batch_is_dynamic(student, questions):
    for question in questions:
        for batch in question["batches"]:
            try:
                out = _run(student, question, _inputs(question, batch, batch))
            except AnswerMissing:
                raise
            except Exception as exc:  # noqa: BLE001 - onnxruntime refuses the shape
                raise AssertionError(
                    f"batch {batch} does not run ({type(exc).__name__}): make the batch dimension "
                    "dynamic (dynamic_shapes)"
                ) from None
            assert out.shape == (batch, question["classes"]), (
                f"batch {batch} gave output shape {out.shape}: make the batch dimension dynamic"
            )


@points(1)
def test_matches_the_model_in_eval_mode(student, solution, questions):
    for question in questions:
        x = _inputs(
            question, question["example_batch"], 0
        )  # the example's batch: static files run too
        worst = float(np.abs(_run(student, question, x) - _run(solution, question, x)).max())
        assert worst < 1e-4, (
            f"onnxruntime on your file differs from the model in eval mode by {worst:.2e}: "
            "call model.eval() before exporting"
        )


@points(1)
def test_returns_the_error_as_float(student, questions):
    for question in questions:
        student.succeeded(question["id"])
        # The error of an export that was never written, or does not run, is no answer.
        _run(student, question, _inputs(question, question["example_batch"], 0))
        returned = student.json(f"{question['id']}.returned")
        assert returned.get("type") == "float", f"return a Python float, not {returned.get('type')}"
        value = returned.get("value")
        assert isinstance(value, float) and 0 <= value < 1e-4, (
            f"returned error {value!r} is not a small non-negative difference"
        )
