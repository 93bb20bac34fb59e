package envoy.authz

default allow := {
	"allowed": true,
	"http_status": 200,
}

allow := response if {
	count(disallowlist) > 0
	response := {
		"allowed": false,
		"body": "Unauthorized Request",
		"http_status": 400,
		"headers": disallowlist,
	}
}

disallowlist contains reason if {
	input.attributes.request.http.method == "POST"
	reason = {"why": "POST method is not allowed"}
}

disallowlist contains reason if {
	input.attributes.request.http.path == "/admin"
	reason = {"why": "/admin path is not allowed"}
}
