"""Drive managed (lifecycle) nodes to ACTIVE, as launch_ros does with its lifecycle events:
unconfigured -> configure -> inactive -> activate. Used by the cell runner after every (re)start."""

from __future__ import annotations

import threading
import time

from lifecycle_msgs.msg import State, Transition
from lifecycle_msgs.srv import ChangeState, GetState
from rclpy.node import Node


class LifecycleError(RuntimeError):
    pass


def _call(node: Node, client, request, timeout_s: float):
    done = threading.Event()
    future = client.call_async(request)
    future.add_done_callback(lambda _: done.set())
    if not done.wait(timeout_s):
        client.remove_pending_request(future)
        raise LifecycleError(f"{client.srv_name} did not answer within {timeout_s}s")
    return future.result()


def bring_to_active(node: Node, fqn: str, timeout_s: float = 30.0) -> None:
    """Configure and activate the lifecycle node `fqn`. The caller's executor must be spinning `node`
    in another thread. Raises LifecycleError with the reason when the node refuses or never appears."""
    get_state = node.create_client(GetState, f"{fqn}/get_state")
    change_state = node.create_client(ChangeState, f"{fqn}/change_state")
    try:
        end = time.monotonic() + timeout_s
        while not (get_state.service_is_ready() and change_state.service_is_ready()):
            if time.monotonic() > end:
                raise LifecycleError(f"{fqn}: lifecycle services did not appear within {timeout_s}s")
            time.sleep(0.1)
        for _ in range(4):  # at most configure + activate, plus slack for a state read between them
            state = _call(node, get_state, GetState.Request(), timeout_s).current_state
            if state.id == State.PRIMARY_STATE_ACTIVE:
                return
            transition = {
                State.PRIMARY_STATE_UNCONFIGURED: Transition.TRANSITION_CONFIGURE,
                State.PRIMARY_STATE_INACTIVE: Transition.TRANSITION_ACTIVATE,
            }.get(state.id)
            if transition is None:
                raise LifecycleError(f"{fqn}: cannot activate from state {state.label!r}")
            result = _call(node, change_state, ChangeState.Request(transition=Transition(id=transition)), timeout_s)
            if not result.success:
                raise LifecycleError(f"{fqn}: transition {transition} from {state.label!r} refused (see its log)")
        raise LifecycleError(f"{fqn}: did not reach active")
    finally:
        node.destroy_client(get_state)
        node.destroy_client(change_state)
