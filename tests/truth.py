"""The synthetic worlds' true graphs, written out independently of the library (for tests)."""

PENDULUM_EDGES = {
    ("pendulum_angle", "shadow_length"),
    ("pendulum_angle", "shadow_position"),
    ("light_angle", "shadow_length"),
    ("light_angle", "shadow_position"),
}
FLOW_EDGES = {
    ("ball_size", "water_height"),
    ("water_height", "water_flow"),
    ("hole_position", "water_flow"),
}
