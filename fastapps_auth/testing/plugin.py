"""pytest plugin (entry point ``pytest11``): fixtures are inert until a test asks for them."""
