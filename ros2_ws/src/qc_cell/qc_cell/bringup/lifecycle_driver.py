"""Drive managed (lifecycle) nodes to ACTIVE, as launch_ros does with its lifecycle events:
unconfigured -> configure -> inactive -> activate. Used by the cell activator after every (re)start."""

from __future__ import annotations

import threading
import time

from lifecycle_msgs.msg import State, Transition
from lifecycle_msgs.srv import ChangeState, GetState
from rclpy.node import Node

# The transition that moves a node from a primary state towards ACTIVE.
_NEXT_TRANSITION = {
    State.PRIMARY_STATE_UNCONFIGURED: Transition.TRANSITION_CONFIGURE,
    State.PRIMARY_STATE_INACTIVE: Transition.TRANSITION_ACTIVATE,
}


class LifecycleError(RuntimeError):
    pass


class LifecycleClient:
    """get_state / change_state of one lifecycle node. The caller's executor must spin `node` in another thread."""

    def __init__(self, node: Node, fqn: str, timeout_s: float = 30.0, state_timeout_s: float = 5.0) -> None:
        """timeout_s bounds a transition (a configure may open a camera or a PLC link); state_timeout_s a state
        read. A request sent just as the service appeared can lose its answer (DDS matching): the caller retries."""
        self.fqn = fqn
        self._node = node
        self._timeout_s = timeout_s
        self._state_timeout_s = state_timeout_s
        self._get_state = node.create_client(GetState, f"{fqn}/get_state")
        self._change_state = node.create_client(ChangeState, f"{fqn}/change_state")

    def ready(self) -> bool:
        return self._get_state.service_is_ready() and self._change_state.service_is_ready()

    def state(self) -> State:
        return self._call(self._get_state, GetState.Request(), self._state_timeout_s).current_state

    def activate(self) -> None:
        """Configure and activate. Raises LifecycleError with the reason when the node refuses, is in a state
        it cannot be activated from, or does not answer."""
        for _ in range(4):  # at most configure + activate, plus slack for a state read between them
            state = self.state()
            if state.id == State.PRIMARY_STATE_ACTIVE:
                return
            transition = _NEXT_TRANSITION.get(state.id)
            if transition is None:
                raise LifecycleError(f"{self.fqn}: cannot activate from state {state.label!r}")
            request = ChangeState.Request(transition=Transition(id=transition))
            if not self._call(self._change_state, request, self._timeout_s).success:
                raise LifecycleError(f"{self.fqn}: transition {transition} from {state.label!r} refused (see its log)")
        raise LifecycleError(f"{self.fqn}: did not reach active")

    def destroy(self) -> None:
        self._node.destroy_client(self._get_state)
        self._node.destroy_client(self._change_state)

    @staticmethod
    def _call(client, request, timeout_s: float):
        done = threading.Event()
        future = client.call_async(request)
        future.add_done_callback(lambda _: done.set())
        if not done.wait(timeout_s):
            client.remove_pending_request(future)
            raise LifecycleError(f"{client.srv_name} did not answer within {timeout_s}s")
        return future.result()


def bring_to_active(node: Node, fqn: str, timeout_s: float = 30.0) -> None:
    """Wait for the lifecycle node `fqn` to appear, then configure and activate it (see LifecycleClient)."""
    client = LifecycleClient(node, fqn, timeout_s)
    try:
        end = time.monotonic() + timeout_s
        while not client.ready():
            if time.monotonic() > end:
                raise LifecycleError(f"{fqn}: lifecycle services did not appear within {timeout_s}s")
            time.sleep(0.1)
        client.activate()
    finally:
        client.destroy()
