package envoy.authz

default allow := false

allow if {
  input.parsed_body.firstname == "Charlie"
  input.parsed_body.lastname == "Opa"
}
