"""`ros2 param` for machines without ros2cli (the PyPI set-up): list, get, set and describe the parameters of a
running node through rclpy's parameter services.

    python -m qc_cell.tools.param list /cell1/decision
    python -m qc_cell.tools.param get /cell1/decision reinspect_threshold
    python -m qc_cell.tools.param set /cell1/decision reinspect_threshold 0.4
    python -m qc_cell.tools.param describe decision reinspect_threshold --namespace cell1

A node name without a leading / is taken in --namespace (default: $ROS_NAMESPACE, else the root). A value is read
as YAML, like `ros2 param set` does (0.4, true, "text", [a, b]); an integer given for a double parameter is taken
as that double. Exit status: 0 done, 1 the node refused the change (the reason is printed), 2 usage error, node not
running or parameter not declared.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import rclpy
import yaml
from rcl_interfaces.msg import ParameterDescriptor, ParameterType
from rcl_interfaces.srv import DescribeParameters, GetParameters, ListParameters, SetParameters
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter, parameter_value_to_python
from rclpy.validate_full_topic_name import validate_full_topic_name

USAGE_ERROR, REFUSED = 2, 1
TYPE_NAMES = {
    ParameterType.PARAMETER_NOT_SET: "not set",
    ParameterType.PARAMETER_BOOL: "bool",
    ParameterType.PARAMETER_INTEGER: "int",
    ParameterType.PARAMETER_DOUBLE: "double",
    ParameterType.PARAMETER_STRING: "string",
    ParameterType.PARAMETER_BYTE_ARRAY: "byte_array",
    ParameterType.PARAMETER_BOOL_ARRAY: "bool_array",
    ParameterType.PARAMETER_INTEGER_ARRAY: "int_array",
    ParameterType.PARAMETER_DOUBLE_ARRAY: "double_array",
    ParameterType.PARAMETER_STRING_ARRAY: "string_array",
}


class ToolError(Exception):
    """Ends the command with a message and an exit status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def full_name(node: str, namespace: str) -> str:
    """/ns/node for a node name given absolute or relative to namespace."""
    if node.startswith("/"):
        return node.rstrip("/")
    return "/" + "/".join(part for part in (*namespace.strip("/").split("/"), node.strip("/")) if part)


def parse_value(text: str, type_: int) -> Any:
    """The command-line value as the parameter's type (YAML, as ros2 param set; int -> double where needed)."""
    if type_ == ParameterType.PARAMETER_STRING:
        return text
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ToolError(f"value {text!r} is not valid YAML: {exc}", USAGE_ERROR) from exc
    if type_ == ParameterType.PARAMETER_DOUBLE and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if type_ == ParameterType.PARAMETER_DOUBLE_ARRAY and isinstance(value, list):
        return [float(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in value]
    return value


def show(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


class ParameterClient:
    """Calls one node's parameter services from a private context."""

    def __init__(self, node_name: str, timeout_s: float) -> None:
        try:
            validate_full_topic_name(f"{node_name}/list_parameters", is_service=True)
        except Exception as exc:  # rclpy's InvalidServiceNameException and friends
            raise ToolError(f"{node_name!r} is not a valid node name: {exc}", USAGE_ERROR) from exc
        self.target = node_name
        self.timeout_s = timeout_s
        self._context = Context()
        rclpy.init(args=[], context=self._context)
        self._node = Node(f"qc_param_{os.getpid()}", context=self._context, start_parameter_services=False)
        self._executor = SingleThreadedExecutor(context=self._context)
        self._executor.add_node(self._node)

    def close(self) -> None:
        self._executor.shutdown()
        self._node.destroy_node()
        rclpy.try_shutdown(context=self._context)

    def call(self, srv_type: Any, service: str, request: Any) -> Any:
        client = self._node.create_client(srv_type, f"{self.target}/{service}")
        try:
            if not client.wait_for_service(timeout_sec=self.timeout_s):
                running = sorted(f"{ns.rstrip('/')}/{name}" for name, ns in self._node.get_node_names_and_namespaces())
                running = [n for n in running if n != f"/{self._node.get_name()}"]
                raise ToolError(
                    f"node {self.target} is not running (or has no parameter services) after {self.timeout_s:g} s; "
                    f"running nodes: {', '.join(running) or 'none'}",
                    USAGE_ERROR,
                )
            future = client.call_async(request)
            self._executor.spin_until_future_complete(future, timeout_sec=self.timeout_s)
            if not future.done():
                raise ToolError(f"{self.target}/{service} did not answer within {self.timeout_s:g} s", USAGE_ERROR)
            return future.result()
        finally:
            self._node.destroy_client(client)

    def describe(self, name: str) -> ParameterDescriptor:
        request = DescribeParameters.Request(names=[name])
        descriptors = self.call(DescribeParameters, "describe_parameters", request).descriptors
        # An undeclared name: no descriptor (newer rclpy) or one without type (older).
        if not descriptors or descriptors[0].type == ParameterType.PARAMETER_NOT_SET:
            raise ToolError(f"node {self.target} has no parameter {name!r}", USAGE_ERROR)
        return descriptors[0]


def list_command(client: ParameterClient, args: argparse.Namespace) -> int:
    result = client.call(ListParameters, "list_parameters", ListParameters.Request(depth=0))
    for name in sorted(result.result.names):
        print(name)
    return 0


def get_command(client: ParameterClient, args: argparse.Namespace) -> int:
    client.describe(args.name)
    [value] = client.call(GetParameters, "get_parameters", GetParameters.Request(names=[args.name])).values
    print(show(parameter_value_to_python(value)))
    return 0


def set_command(client: ParameterClient, args: argparse.Namespace) -> int:
    descriptor = client.describe(args.name)
    value = parse_value(args.value, descriptor.type)
    try:
        parameter = Parameter(args.name, Parameter.Type(descriptor.type), value)
    except (TypeError, ValueError) as exc:
        raise ToolError(
            f"refused: {args.name} is a {TYPE_NAMES[descriptor.type]} parameter, {args.value!r} is not", REFUSED
        ) from exc
    request = SetParameters.Request(parameters=[parameter.to_parameter_msg()])
    [result] = client.call(SetParameters, "set_parameters", request).results
    if not result.successful:
        raise ToolError(f"refused by {client.target}: {result.reason}", REFUSED)
    print(f"{client.target} {args.name} = {show(value)}")
    return 0


def describe_command(client: ParameterClient, args: argparse.Namespace) -> int:
    d = client.describe(args.name)
    lines = [
        f"Parameter name: {d.name}",
        f"  Type: {TYPE_NAMES.get(d.type, d.type)}",
        f"  Description: {d.description}",
        f"  Read only: {str(d.read_only).lower()}",
    ]
    for r in [*d.floating_point_range, *d.integer_range]:
        lines.append(f"  Range: {r.from_value} .. {r.to_value}" + (f" (step {r.step})" if r.step else ""))
    if d.additional_constraints:
        lines.append(f"  Constraints: {d.additional_constraints}")
    print("\n".join(lines))
    return 0


COMMANDS = {"list": list_command, "get": get_command, "set": set_command, "describe": describe_command}


def parser() -> argparse.ArgumentParser:
    result = argparse.ArgumentParser(
        prog="python -m qc_cell.tools.param",
        description="List, get, set and describe the parameters of a running node (ros2 param without ros2cli).",
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("node", help="node name, e.g. /cell1/decision (relative names are taken in --namespace)")
    common.add_argument("--namespace", "-n", default=os.environ.get("ROS_NAMESPACE", "/"), help="for relative names")
    common.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the node (default 5)")
    commands = result.add_subparsers(dest="command", required=True)
    commands.add_parser("list", parents=[common], help="names of the node's parameters")
    for command, text in (("get", "a parameter's value"), ("describe", "type, description, range, read-only")):
        commands.add_parser(command, parents=[common], help=text).add_argument("name")
    set_parser = commands.add_parser("set", parents=[common], help="change a parameter (checked by the node)")
    set_parser.add_argument("name")
    set_parser.add_argument("value", help="YAML value: 0.4, true, text, [a, b]")
    return result


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)  # exits 2 on a usage error
    try:
        client = ParameterClient(full_name(args.node, args.namespace), args.timeout)
    except ToolError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.status
    try:
        return COMMANDS[args.command](client, args)
    except ToolError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.status
    finally:
        client.close()


if __name__ == "__main__":
    raise SystemExit(main())
