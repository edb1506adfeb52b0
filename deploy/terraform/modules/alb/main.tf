################################################################################
# Load balancer
################################################################################

resource "aws_lb" "this" {
  # checkov:skip=CKV2_AWS_28: a WAF web ACL is optional (waf_web_acl_arn): the proxy authenticates every request itself
  # checkov:skip=CKV2_AWS_76: the web ACL is the operator's, not managed here (and the app is Python: no Log4j)
  name               = var.name
  load_balancer_type = "application"
  internal           = false
  subnets            = var.public_subnet_ids
  security_groups    = [var.security_group_id]

  # Longer than any silence inside a stream (the API pings; Claude Code gives up after 300 s)
  # and shorter than the app's keep-alive (CLAUDE_PROXY_KEEPALIVE_SECONDS=310), so that the
  # ALB, never the app, closes an idle connection first: otherwise the ALB may reuse a
  # connection the app just closed and answer 502.
  idle_timeout = var.idle_timeout

  # Requests with header names that are not valid HTTP never reach the app.
  drop_invalid_header_fields = true
  desync_mitigation_mode     = "defensive"
  enable_http2               = true
  enable_deletion_protection = var.enable_deletion_protection

  dynamic "access_logs" {
    for_each = var.access_logs_bucket == null ? [] : [var.access_logs_bucket]

    content {
      bucket  = access_logs.value
      prefix  = var.access_logs_prefix
      enabled = true
    }
  }

  tags = var.tags
}

# Optional AWS WAF web ACL (rate-based rules, IP sets, managed rule groups) in front of the
# listeners. Mind that managed rule groups inspecting bodies can block large prompts.
resource "aws_wafv2_web_acl_association" "this" {
  count = var.waf_web_acl_arn == null ? 0 : 1

  resource_arn = aws_lb.this.arn
  web_acl_arn  = var.waf_web_acl_arn
}

################################################################################
# Target group
################################################################################

resource "aws_lb_target_group" "this" {
  name        = var.target_group_name
  vpc_id      = var.vpc_id
  target_type = "ip" # awsvpc tasks register by IP
  protocol    = "HTTP"
  port        = var.container_port

  # A stream is one long request: send new ones to the task with the fewest in flight.
  load_balancing_algorithm_type = "least_outstanding_requests"

  # How long a deregistering task keeps its in-flight requests: in a deployment or a
  # scale-in ECS takes the task out of the target group first, waits for this (or for its
  # last request to end, whichever is first), and only then sends SIGTERM. Long streams
  # need it long: at least 600 s in production, above every idle timeout (the ALB's 300 s,
  # the app's keep-alive 310 s and upstream idle 290 s). What SIGTERM reaches without it
  # (Spot interruptions, unhealthy tasks) the app's drain handles within stopTimeout.
  deregistration_delay = var.deregistration_delay

  # /health answers 503 from the first instant of a drain; 2 x 10 s in, 3 x 10 s out.
  health_check {
    enabled             = true
    protocol            = "HTTP"
    port                = "traffic-port"
    path                = "/health"
    matcher             = "200"
    interval            = 10
    timeout             = 5
    healthy_threshold   = 2
    unhealthy_threshold = 3
  }

  tags = var.tags

  lifecycle {
    precondition {
      condition     = var.deregistration_delay > var.idle_timeout
      error_message = "deregistration_delay (${var.deregistration_delay} s) must be above idle_timeout (${var.idle_timeout} s): a draining task must keep its streams longer than any silence the load balancer allows."
    }
  }
}

################################################################################
# Listeners
################################################################################

resource "aws_lb_listener" "https" {
  load_balancer_arn = aws_lb.this.arn
  port              = 443
  protocol          = "HTTPS"
  certificate_arn   = var.certificate_arn
  ssl_policy        = var.ssl_policy

  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.this.arn
  }

  tags = var.tags
}

# /metrics and /ready describe the service's insides: not for the internet. Scrape them from
# inside the task (the ADOT sidecar at localhost:8000) instead.
resource "aws_lb_listener_rule" "internal_paths" {
  count = var.expose_internal_paths ? 0 : 1

  listener_arn = aws_lb_listener.https.arn
  priority     = 10

  action {
    type = "fixed-response"

    fixed_response {
      content_type = "application/json"
      status_code  = "404"
      message_body = "{\"type\":\"error\",\"error\":{\"type\":\"not_found_error\",\"message\":\"Not found\"}}"
    }
  }

  condition {
    path_pattern {
      values = ["/metrics", "/ready"]
    }
  }

  tags = var.tags
}

resource "aws_lb_listener_certificate" "additional" {
  for_each = toset(var.additional_certificate_arns)

  listener_arn    = aws_lb_listener.https.arn
  certificate_arn = each.value
}

resource "aws_lb_listener" "http" {
  load_balancer_arn = aws_lb.this.arn
  port              = 80
  protocol          = "HTTP"

  default_action {
    type = "redirect"

    redirect {
      protocol    = "HTTPS"
      port        = "443"
      status_code = "HTTP_301"
    }
  }

  tags = var.tags
}
