"""The "shapes and speech" world: a data builder, speech synthesis and independent judges."""
