"""The executor of each playbook kind, imported when first needed (ansible-runner and the
Kubernetes client are slow to import, and most workers never use them)."""

from __future__ import annotations

import importlib

from tasks.remediation.executors.base import Executor, ExecutorKind, ExecutorSpec

# kind -> (module, executor class, spec model)
_REGISTRY: dict[ExecutorKind, tuple[str, str, str]] = {
    ExecutorKind.SHELL: ("sandbox", "ShellExecutor", "ShellSpec"),
    ExecutorKind.CONTAINER: ("sandbox", "ContainerExecutor", "ContainerSpec"),
    ExecutorKind.ANSIBLE: ("ansible", "AnsibleExecutor", "AnsibleSpec"),
    ExecutorKind.LIBVIRT: ("libvirt", "LibvirtExecutor", "LibvirtSpec"),
    ExecutorKind.KUBERNETES: ("kubernetes", "KubernetesExecutor", "KubernetesSpec"),
}


def _attribute(kind: ExecutorKind, index: int) -> object:
    module_name, *names = _REGISTRY[kind]
    module = importlib.import_module(f"tasks.remediation.executors.{module_name}")
    return getattr(module, names[index])


def spec_model_for(kind: ExecutorKind) -> type[ExecutorSpec]:
    model = _attribute(kind, 1)
    assert isinstance(model, type) and issubclass(model, ExecutorSpec)
    return model


def executor_for(kind: ExecutorKind) -> Executor:
    executor_class = _attribute(kind, 0)
    assert isinstance(executor_class, type)
    executor: Executor = executor_class()
    return executor
