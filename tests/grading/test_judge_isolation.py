"""Step 3, issue 20 items 1, 2, 6 and 9: answers that are costly or dangerous to look at.

Each attack is judged by a judge process of its own, with small limits so that the test is quick;
what is asserted is the verdict and that the next answer is judged as before, never a timing.
"""

from __future__ import annotations

import time

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from teacher.grading.judge import AnswerMissing, Answers, load_exercise
from teacher.grading.judge_process import JudgeLimits, JudgeProcess

EX2 = "ex2_onnx_export"


def _graph_model(nodes, initializers=()):
    graph = helper.make_graph(
        nodes,
        "bomb",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", "features"])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, None)],
        initializer=list(initializers),
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _expanded(size, name="big"):
    """``input`` summed to a scalar, expanded to size x size: costs nothing to store."""
    shape = helper.make_tensor("shape", TensorProto.INT64, [2], [size, size])
    return [
        helper.make_node("ReduceSum", ["input"], ["total"], keepdims=0),
        helper.make_node("Constant", [], ["shape_c"], value=shape),
        helper.make_node("Expand", ["total", "shape_c"], [name]),
    ]


def time_bomb(matmuls, size=2048):
    nodes = _expanded(size, "m0")
    for index in range(matmuls):
        nodes.append(helper.make_node("MatMul", [f"m{index}", "m0"], [f"m{index + 1}"]))
    nodes.append(helper.make_node("ReduceSum", [f"m{matmuls}"], ["output"], keepdims=0))
    return _graph_model(nodes)


def memory_bomb():
    nodes = _expanded(60000)
    nodes.append(helper.make_node("ReduceSum", ["big"], ["output"], keepdims=0))
    return _graph_model(nodes)


def leaking_constant(location):
    """A ``Constant`` node (not an initializer) whose tensor reads its bytes from ``location``."""
    tensor = TensorProto(name="leak", data_type=TensorProto.UINT8, dims=[64])
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "64")):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    nodes = [
        helper.make_node("Constant", [], ["leaked"], value=tensor),
        helper.make_node("Cast", ["leaked"], ["as_float"], to=TensorProto.FLOAT),
        helper.make_node("ReduceSum", ["as_float"], ["s"], keepdims=0),
        helper.make_node("Add", ["input", "s"], ["output"]),
    ]
    return _graph_model(nodes)


def _answers(tmp_path, name, model):
    folder = tmp_path / name
    (folder / "q0").mkdir(parents=True)
    onnx.save_model(model, folder / "q0" / "model.onnx")
    return Answers(folder)


def _questions():
    return load_exercise(EX2).questions(3)


@pytest.fixture(scope="module")
def judge():
    process = JudgeProcess(JudgeLimits(memory_mb=3072, cpu_seconds=3, wall_seconds=60))
    yield process
    process.close()


def _verdicts(judge, tmp_path, name, model):
    student = _answers(tmp_path, name, model)
    results = judge.judge(EX2, student, Answers(tmp_path / "none", "the solution"), _questions())
    assert results is not None, "the judge process failed instead of failing the checks"
    return {r.name: r for r in results}


def test_the_issues_time_bomb_costs_the_checks_not_the_run(judge, tmp_path):
    verdicts = _verdicts(judge, tmp_path, "matmuls", time_bomb(20_000))
    assert all(r.points == 0 for r in verdicts.values())
    assert "20004 operations" in verdicts["test_batch_is_dynamic"].message


def test_a_time_bomb_under_the_operation_limit_is_stopped_by_the_cpu_limit(judge, tmp_path):
    started = time.monotonic()
    verdicts = _verdicts(judge, tmp_path, "few_matmuls", time_bomb(400, size=4096))
    dynamic = verdicts["test_batch_is_dynamic"]
    assert dynamic.points == 0
    assert "more than 3 s of CPU" in dynamic.message, dynamic.message
    assert time.monotonic() - started < 600  # the wall limit, not a measured figure


def test_a_memory_bomb_costs_the_checks_not_the_grader(judge, tmp_path):
    verdicts = _verdicts(judge, tmp_path, "expand", memory_bomb())
    assert all(r.points == 0 for r in verdicts.values())
    dynamic = verdicts["test_batch_is_dynamic"].message
    assert "memory" in dynamic.lower() or "3072 MB" in dynamic, dynamic
    # The grader (this process) is alive, and the same judge process judges the next answer.
    again = _verdicts(judge, tmp_path, "matmuls_again", time_bomb(20_000))
    assert "20004 operations" in again["test_batch_is_dynamic"].message


@pytest.mark.parametrize("relative", [False, True])
def test_a_constant_with_external_data_is_refused_and_leaks_nothing(
    judge, tmp_path, relative, monkeypatch
):
    secret = tmp_path / "solution_secret.txt"
    secret.write_bytes(b"SOLUTION-BYTES-" * 10)
    monkeypatch.chdir(tmp_path)  # the grader's working directory holds the secret
    location = secret.name if not relative else "../" * 12 + str(secret).lstrip("/")
    verdicts = _verdicts(judge, tmp_path, f"leaker{relative}", leaking_constant(location))
    for verdict in verdicts.values():
        assert verdict.points == 0
        assert "SOLUTION-BYTES" not in verdict.message and "83, 79, 76" not in verdict.message
    assert "point to external data" in verdicts["test_batch_is_dynamic"].message


def test_the_judge_process_sees_no_file_outside_the_answers(judge, tmp_path, monkeypatch):
    """Even a check that tried would not find the solutions: they are not in its world."""
    from teacher.grading import judge_process

    if not judge.sandboxed:
        pytest.skip("bubblewrap is not available")
    folders = [tmp_path / "a", tmp_path / "b"]
    for folder in folders:
        folder.mkdir()
    (tmp_path / "a" / "x.json").write_text("1")
    request = {"exercise": EX2, "questions": _questions(), "limits": vars(judge.limits),
               "answers": [{"who": "your code"}, {"who": "the solution"}]}  # fmt: skip
    assert judge_process.judge_here(request, folders)  # here, in the test: it sees everything
    # In the judge process, the solutions folder does not exist.
    probe = tmp_path / "probe"
    (probe / "q0").mkdir(parents=True)
    from submissions import ROOT

    location = "../" * 12 + str(ROOT / "solutions" / "ex6_atomic_save.ipynb").lstrip("/")
    onnx.save_model(leaking_constant(location), probe / "q0" / "model.onnx")
    results = judge.judge(EX2, Answers(probe), Answers(tmp_path / "b"), _questions())
    assert results is not None
    assert not any("cell_type" in r.message for r in results)


def test_a_huge_pickled_list_is_refused_before_unpickling(tmp_path):
    """Issue item 6: 48 MB lists took 15 s each through the weights-only unpickler."""
    torch.save({"history": list(range(2_000_000))}, tmp_path / "history.pt")
    with pytest.raises(AnswerMissing, match="pickle"):
        Answers(tmp_path).torch_file("history.pt")
    torch.save({"weights": torch.zeros(2_000_000)}, tmp_path / "weights.pt")  # tensors: fine
    assert Answers(tmp_path).torch_file("weights.pt")["weights"].shape == (2_000_000,)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_honest_answers_are_judged_in_the_judge_process(judge, tmp_path):
    """The same judge process that survived the bombs gives an honest export full marks."""
    from torch import nn

    question = _questions()[0]
    model = nn.Sequential(nn.Linear(question["features"], question["classes"])).eval()
    folder = tmp_path / "honest"
    (folder / "q0").mkdir(parents=True)
    example = torch.randn(question["example_batch"], question["features"])
    torch.onnx.export(
        model,
        (example,),
        folder / "q0" / "model.onnx",
        dynamo=False,
        input_names=["input"],
        dynamic_axes={"input": {0: "batch"}},
    )
    (folder / "q0.returned.json").write_text('{"type": "float", "value": 1e-07}')
    results = judge.judge(EX2, Answers(folder), Answers(folder, "the solution"), [question])
    assert results is not None
    assert all(r.passed for r in results), [r.message for r in results]
    assert np.isfinite(len(results))
