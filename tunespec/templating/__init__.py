"""Templates: a row's record -> rendered segments (prompt and completion, or a conversation), shared by the spec
(which names a template), the compiler (which renders every row) and the runtime (which renders prompts)."""
