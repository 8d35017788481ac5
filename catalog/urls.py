from django.urls import path

from catalog import views

app_name = "catalog"
urlpatterns = [
    path("", views.home, name="home"),
    path("search/", views.search, name="search"),
    path("s/<slug:slug>/", views.listing_detail, name="listing-detail"),
]
