"""The detector: backbone, anchors, box coding, heads (sigmoid, directional with tracked means,
learned prototypes), losses, the head registry and checkpoint reading and writing."""
