// Starts Swagger UI on this server's OpenAPI document (a file, not an inline script: the page's
// Content-Security-Policy allows only scripts served from here).
window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  presets: [SwaggerUIBundle.presets.apis],
  layout: "BaseLayout",
});
