# Not published: the primer's output document reads query_parameters_to_remove, which its policy
# never defines, so OPA refuses the module as published (rego_unsafe_var_error). This one rule,
# added after the published text, is the least that makes it load; it also exercises the field.
query_parameters_to_remove := ["debug"]
