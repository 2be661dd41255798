"""Recording stand-in for `launch_ros`."""
