"""Base of the cell's managed nodes that own a device: the camera driver (its image source) and the reject actuator
(its outputs). What both do alike lives here; each node keeps its own activate/deactivate.

- The node's state is the one rclpy's lifecycle state machine holds (`lifecycle_state`), never a copy kept by
  hand, so diagnostics and replies always say what `ros2 lifecycle get` says.
- configure calls `acquire()`. An error of a type in `configure_errors` (a missing device, a bad setting found
  only now) fails the transition with one log line, after `release()` has undone what was acquired, and the node
  stays unconfigured, ready for the next try.
- cleanup, shutdown, error (a transition callback raised) and destroy_node (the process stops without a shutdown
  transition) call `release()`, which must therefore be idempotent and work before anything was acquired.
"""

from __future__ import annotations

from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn

SUCCESS = TransitionCallbackReturn.SUCCESS
FAILURE = TransitionCallbackReturn.FAILURE


class DeviceNode(LifecycleNode):
    # Errors of acquire() that fail the configure transition cleanly (anything else is a bug: rclpy turns it into
    # the ErrorProcessing transition, which releases too).
    configure_errors: tuple[type[Exception], ...] = ()

    @property
    def lifecycle_state(self) -> str:
        """The state machine's current state: unconfigured, inactive, active or finalized, or a transition state
        (configuring, activating, ...) while a transition runs. rclpy has no public getter: its own
        trigger_shutdown reads `_state_machine.current_state`, an (id, label) pair on Humble as on Kilted."""
        return self._state_machine.current_state[1]

    def acquire(self) -> None:
        """Build and open the device (configure). Raise one of configure_errors when it cannot be had."""
        raise NotImplementedError(f"{type(self).__name__} must implement acquire()")

    def release(self) -> None:
        """Close whatever acquire() opened; idempotent, and safe before acquire() and after a failed one."""
        raise NotImplementedError(f"{type(self).__name__} must implement release()")

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self.acquire()
        except self.configure_errors as exc:
            self.get_logger().error(f"configure failed: {exc}")
            self.release()
            return FAILURE
        return SUCCESS

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.release()
        return SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.release()
        return SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.release()  # SUCCESS: back to unconfigured, where configure may be tried again
        return SUCCESS

    def destroy_node(self) -> None:
        self.release()  # also when the process is stopped without a shutdown transition
        super().destroy_node()
